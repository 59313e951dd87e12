"""The backpressure policies' answers at and around every threshold.
Reactor-free (these run under ``tox -e mutation``)."""

from __future__ import annotations

from typing import Any

import pytest

from nous_twisted.backpressure import StrictPull, Watermarks


def test_strict_pull_pauses_unless_the_consumer_waits_with_nothing_queued() -> None:
    p = StrictPull()
    assert p.pause_after_chunk(0, True) is False
    assert p.pause_after_chunk(0, False) is True
    assert p.pause_after_chunk(1, True) is True
    assert p.pause_after_chunk(1, False) is True


def test_strict_pull_resumes_only_for_a_waiting_consumer_with_nothing_queued() -> None:
    p = StrictPull()
    assert p.may_resume(0, True) is True
    assert p.may_resume(0, False) is False
    assert p.may_resume(1, True) is False
    assert p.may_resume(1, False) is False


def test_strict_pull_decodes_more_only_when_nothing_is_queued() -> None:
    p = StrictPull()
    assert p.decode_more(0) is True
    assert p.decode_more(1) is False


def test_watermarks_defaults() -> None:
    w = Watermarks()
    assert (w.high, w.low) == (1000, 100)


def test_watermarks_thresholds_exactly() -> None:
    w = Watermarks(high=5, low=2)
    for waiting in (True, False):
        assert w.pause_after_chunk(4, waiting) is False
        assert w.pause_after_chunk(5, waiting) is True
        assert w.pause_after_chunk(6, waiting) is True
        assert w.may_resume(1, waiting) is True
        assert w.may_resume(2, waiting) is False
        assert w.may_resume(3, waiting) is False
    assert w.decode_more(4) is True
    assert w.decode_more(5) is False


def test_watermarks_low_zero_resumes_on_an_empty_queue() -> None:
    # low_water=0 is accepted, so it must mean "resume when empty", not "never"
    w = Watermarks(high=1, low=0)
    assert w.may_resume(0, False) is True
    assert w.may_resume(0, True) is True
    assert w.may_resume(1, True) is False
    assert Watermarks(high=3, low=2).low == 2


@pytest.mark.parametrize("high, low", [(2, 2), (2, 3), (0, 0), (5, -1)])
def test_watermarks_refuse_bad_orders(high: int, low: int) -> None:
    with pytest.raises(ValueError) as e:
        Watermarks(high=high, low=low)
    assert str(e.value) == f"need 0 <= low_water < high_water, not {low}, {high}"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"high": 5.0}, "high_water must be an int, not float"),
        ({"high": True}, "high_water must be an int, not bool"),
        ({"low": "1"}, "low_water must be an int, not str"),
        ({"low": False}, "low_water must be an int, not bool"),
    ],
)
def test_watermarks_refuse_non_ints(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError) as e:
        Watermarks(**kw)
    assert str(e.value) == message

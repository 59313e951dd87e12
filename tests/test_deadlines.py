"""Timeouts of one length sharing one DelayedCall (``nous_twisted.deadlines``)."""

from __future__ import annotations

from twisted.internet.task import Clock

from nous_twisted.deadlines import Deadlines, deadlines

from .helpers import LogCapture


class Waiter:
    def __init__(self, name: str, fired: list[str]) -> None:
        self.name, self.fired = name, fired

    def expire(self) -> None:
        self.fired.append(self.name)


def test_a_timeout_fires_after_its_seconds_unless_discarded() -> None:
    clock = Clock()
    fired: list[str] = []
    d = Deadlines(clock, 10.0)
    a, b = Waiter("a", fired), Waiter("b", fired)
    d.add(a.expire)
    clock.advance(4)
    d.add(b.expire)  # due at 14
    d.discard(a.expire)  # a new binding of the same method finds the entry
    clock.advance(6)
    assert fired == [] and len(d) == 1
    clock.advance(3.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["b"] and len(d) == 0
    assert clock.getDelayedCalls() == []


def test_one_delayed_call_at_a_time_woken_at_the_first_deadline() -> None:
    clock = Clock()
    fired: list[str] = []
    d = Deadlines(clock, 1000.0)
    waiters = [Waiter(str(i), fired) for i in range(100)]
    for w in waiters:  # waiter i is due at 1000 + i
        d.add(w.expire)
        clock.advance(1)
        assert len(clock.getDelayedCalls()) == 1
    for w in waiters[:40]:
        d.discard(w.expire)
    clock.advance(900)  # t = 1000: the call set for waiter 0 wakes and re-arms for waiter 40
    assert fired == [] and len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 1040
    clock.advance(50)  # t = 1050
    assert fired == [str(i) for i in range(40, 51)]
    clock.advance(1000)
    assert fired == [str(i) for i in range(40, 100)]
    assert clock.getDelayedCalls() == []


def test_nothing_waits_once_the_last_is_discarded() -> None:
    """No timer is left in the reactor when no timeout is pending."""
    clock = Clock()
    d = Deadlines(clock, 180.0)
    fired: list[str] = []
    for _ in range(3):
        w = Waiter("w", fired)
        d.add(w.expire)
        assert len(clock.getDelayedCalls()) == 1
        d.discard(w.expire)
        assert clock.getDelayedCalls() == []
    d.discard(Waiter("never added", fired).expire)  # harmless
    clock.advance(200)
    assert fired == []


def test_a_raising_callback_is_logged_and_the_others_still_fire() -> None:
    clock = Clock()
    fired: list[str] = []
    d = Deadlines(clock, 1.0)

    def boom() -> None:
        raise RuntimeError("boom")

    d.add(boom)
    d.add(Waiter("after", fired).expire)
    with LogCapture() as logs:
        clock.advance(1)
    assert fired == ["after"]
    assert any("timeout's callback raised" in str(e.get("log_format")) for e in logs.events)


def test_one_set_per_reactor_and_length() -> None:
    c1, c2 = Clock(), Clock()
    assert deadlines(c1, 30.0) is deadlines(c1, 30.0)
    assert deadlines(c1, 30.0) is not deadlines(c1, 31.0)
    assert deadlines(c1, 30.0) is not deadlines(c2, 30.0)
    assert deadlines(c2, 31.0).seconds == 31.0


def test_a_callback_that_sets_a_new_timeout_leaves_one_timer_at_the_first_deadline() -> None:
    """A timeout's callback may start another call (a retry, a user's
    errback) and so add to the same set while it wakes: one DelayedCall
    stays, set for the earliest deadline left."""
    clock = Clock()
    fired: list[str] = []
    d = Deadlines(clock, 10.0)
    late = Waiter("late", fired)
    first = Waiter("first", fired)
    again = Waiter("again", fired)

    def expire_and_add() -> None:
        first.expire()
        d.add(again.expire)  # due at 10 + 10

    d.add(expire_and_add)
    clock.advance(5)
    d.add(late.expire)  # due at 15
    clock.advance(5)  # t = 10: the first expires and adds "again"
    assert fired == ["first"]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [15.0]
    clock.advance(5)
    assert fired == ["first", "late"]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [20.0]
    clock.advance(5)
    assert fired == ["first", "late", "again"] and clock.getDelayedCalls() == []

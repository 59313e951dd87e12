"""Many timeouts of one length on one reactor, for the price of a dict entry each.

Every post runs a receive timeout that it almost never reaches; Twisted's
``callLater`` and ``cancel`` cost ~2.5 µs a request for it (a
``DelayedCall``, a heap push, a heap that fills with cancelled calls).
Timeouts of one length expire in the order they were set, so a dict in
insertion order is a queue sorted by deadline that also drops any entry in
O(1); one ``DelayedCall`` per length wakes at the first deadline, and is
cancelled when nothing waits.

If the wall clock steps back (``reactor.seconds()`` is ``time.time``),
entries set after the step may expire up to the step's length late; Twisted's
own ``DelayedCall``s move with the clock the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger(namespace="nous_twisted")

__all__ = ["Deadlines", "deadlines"]


class Deadlines:
    """Timeouts of ``seconds`` on ``reactor``: :meth:`add` a callback, it is
    called once ``seconds`` have passed unless :meth:`discard` came first."""

    __slots__ = ("__weakref__", "_call", "_entries", "_reactor", "seconds")

    def __init__(self, reactor: Any, seconds: float) -> None:
        self._reactor = reactor
        self.seconds = seconds
        # callback -> deadline; a bound method is equal (and hashes equal) to
        # every other binding of the same method to the same object
        self._entries: dict[Callable[[], None], float] = {}
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, expire: Callable[[], None]) -> None:
        self._entries[expire] = self._reactor.seconds() + self.seconds
        if self._call is None:
            self._call = self._reactor.callLater(self.seconds, self._wake)

    def discard(self, expire: Callable[[], None]) -> None:
        entries = self._entries
        entries.pop(expire, None)
        if not entries and self._call is not None:
            self._call.cancel()
            self._call = None

    def _wake(self) -> None:
        self._call = None
        entries = self._entries
        now = self._reactor.seconds()
        while entries:
            expire = next(iter(entries))
            deadline = entries[expire]
            if deadline > now:
                if self._call is not None:  # armed by an add() from a callback above, for later
                    self._call.cancel()
                self._call = self._reactor.callLater(deadline - now, self._wake)
                return
            del entries[expire]
            try:
                expire()
            except Exception:
                log.failure("a timeout's callback raised")


_by_reactor: weakref.WeakKeyDictionary[Any, dict[float, Deadlines]] = weakref.WeakKeyDictionary()


def deadlines(reactor: Any, seconds: float) -> Deadlines:
    """The :class:`Deadlines` of ``seconds`` on ``reactor`` (made on first use)."""
    per = _by_reactor.get(reactor)
    if per is None:
        per = _by_reactor[reactor] = {}
    found = per.get(seconds)
    if found is None:
        found = per[seconds] = Deadlines(reactor, seconds)
    return found

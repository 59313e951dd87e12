"""Backpressure policies: when a stream stops reading the socket, and when it
starts again.  Pure values, no reactor; the stream core asks them.

- :class:`StrictPull` (the agent backend): the source is paused after every
  chunk unless the consumer is already waiting with nothing queued, and
  resumed only when the consumer asks for more and nothing is queued, so the
  socket is never read ahead of the consumer;
- :class:`Watermarks` (the treq backend): read ahead until ``high`` events
  are queued; resume under ``low``.

Both bound a consumer that stops asking: see ``max_pause`` in the stream core.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StrictPull:
    """Read one chunk per request for more."""

    def pause_after_chunk(self, queued: int, waiting: bool) -> bool:
        """Stop reading after a chunk?  (Not when the consumer already waits
        with nothing queued: pause+resume would be two syscalls for nothing.)"""
        return queued > 0 or not waiting

    def may_resume(self, queued: int, waiting: bool) -> bool:
        return queued == 0 and waiting

    def decode_more(self, queued: int) -> bool:
        """Expand more already-read (compressed) bytes now?"""
        return queued == 0


@dataclass(frozen=True)
class Watermarks:
    """Read ahead up to ``high`` queued events; resume under ``low``."""

    high: int = 1000
    low: int = 100

    def __post_init__(self) -> None:
        for name in ("high", "low"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}_water must be an int, not {type(v).__name__}")
        if not 0 <= self.low < self.high:
            raise ValueError(f"need 0 <= low_water < high_water, not {self.low}, {self.high}")

    def pause_after_chunk(self, queued: int, waiting: bool) -> bool:
        return queued >= self.high

    def may_resume(self, queued: int, waiting: bool) -> bool:
        # An empty queue always resumes: with low == 0, "under low" never
        # holds, and the stream would stall until max_pause failed it.
        return queued < self.low or queued == 0

    def decode_more(self, queued: int) -> bool:
        return queued < self.high


Policy = StrictPull | Watermarks

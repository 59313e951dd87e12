"""The read-only response-header mapping of ``Reply``, ``HTTPStatusError`` and ``EventStream``.

One type everywhere, so code that reads a rate-limit header works the same
on a success, an error and a stream.  It sits at the bottom of the package
(no Twisted import) because ``errors.py`` uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class ResponseHeaders(Mapping[str, str]):
    """Response headers: lower-case ``str`` names, read-only.

    Lookups ignore case (``headers["X-Request-Id"]`` works).  A header sent
    more than once is one entry, its values joined with ``", "`` in the order
    received (RFC 9110 5.3); :meth:`get_list` splits them back.  Values are
    decoded as latin-1, as the wire carries them.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        merged: dict[str, str] = {}
        pairs = items.items() if isinstance(items, Mapping) else items
        for name, value in pairs:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._items = merged

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, Iterable[bytes]]]) -> ResponseHeaders:
        """From ``(name, [values])`` byte pairs, as Twisted's
        ``Headers.getAllRawHeaders()`` yields them."""
        out = cls.__new__(cls)
        merged: dict[str, str] = {}
        for name, values in raw:
            key = name.decode("latin-1").lower()
            value = ", ".join(v.decode("latin-1") for v in values)
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        out._items = merged
        return out

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_list(self, name: str) -> list[str]:
        """The values of ``name`` split on commas (empty list when absent).

        Only for headers whose values are comma-separated lists: a date
        (``Retry-After: Wed, 21 Oct ...``) or ``Set-Cookie`` would split wrongly.
        """
        value = self._items.get(name.lower())
        if value is None:
            return []
        return [v.strip() for v in value.split(",") if v.strip()]

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._items!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return ResponseHeaders, (self._items,)


__all__ = ["ResponseHeaders"]

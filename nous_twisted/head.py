"""Reading a whole HTTP/1.1 response head in one pass.

Twisted's ``HTTPClientParser`` is a ``LineReceiver``: every line of a response
head goes through the receiver's split loop, ``lineReceived``,
``headerReceived`` and ``Headers.addRawHeader`` (name canonicalised, value
re-encoded and sanitised), a dozen Python calls a header; for the short
replies of an LLM API that is the largest part of Twisted's parsing cost per
request (issue 8).

When one read holds the whole head (the usual case: servers write a head in
one ``send``, most often with the body), :func:`take_head` reads the status
line and the header fields with one ``split`` and stores them where Twisted's
own methods would (``statusReceived`` builds the ``Response``; the fields go
into ``headers`` / ``connHeaders`` by Twisted's own rule), then hands back the
blank line and what follows, for Twisted's parser to finish exactly as before:
``allHeadersReceived``, body framing, decoders, the end of the response.

Anything out of the ordinary is left to Twisted whole, with nothing touched:
a head split across reads, a bare LF or CR in it (Twisted accepts LF line
ends and rewrites a stray CR), obsolete line folding, a field line without a
colon, a head longer than the parser's line limit, a parser that is not
Twisted's own class or is not at the start of a response, a HEAD request
(whose Content-Length Twisted files differently).  Field values are
whitespace-stripped as Twisted strips them; names are canonicalised by
Twisted's own encoder, which also refuses invalid names as it would.

It relies on private attributes of ``twisted.web._newclient`` and
``twisted.web.http_headers``; :func:`hook_present` checks them once per
connection, and where a Twisted release changed them every head goes through
Twisted's parser (``tests/test_head.py`` fails loudly then).
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.basic import LineReceiver
from twisted.web import http_headers
from twisted.web._newclient import HEADER, STATUS, HTTPClientParser
from twisted.web.http_headers import Headers

# Twisted's header-name canonicaliser (private); without it Twisted parses every head.
_nameEncoder: Any = getattr(http_headers, "_nameEncoder", None)

__all__ = ["hook_present", "take_head"]

_PARSER_ATTRS = ("_buffer", "_busyReceiving", "line_mode", "paused", "_everReceivedData", "request", "MAX_LENGTH")


def hook_present(parser: Any) -> bool:
    """Whether ``parser`` (a fresh ``HTTPClientParser``, connected) is one
    :func:`take_head` knows how to fill."""
    return bool(
        _nameEncoder is not None
        and type(parser) is HTTPClientParser
        and isinstance(LineReceiver.__dict__.get("dataReceived"), type(hook_present))
        and all(hasattr(parser, a) for a in _PARSER_ATTRS)
        and isinstance(getattr(parser, "headers", None), Headers)
        and isinstance(getattr(parser, "connHeaders", None), Headers)
        and isinstance(getattr(parser.headers, "_rawHeaders", None), dict)
        and isinstance(getattr(parser.connHeaders, "_rawHeaders", None), dict)
        and isinstance(getattr(parser, "CONNECTION_CONTROL_HEADERS", None), (set, frozenset))
        and getattr(parser, "state", None) == STATUS
    )


def take_head(parser: Any, data: bytes) -> bytes | None:
    """Read the response head at the start of ``data`` into ``parser``.

    Returns what Twisted's parser must still be given (the blank line that
    ends the head, and everything after it), or None when ``data`` is not a
    head this function takes: then nothing was changed and all of ``data``
    goes to Twisted.  Raises what Twisted's parser would raise on the same
    head (a malformed status line, an invalid field name); the caller treats
    it as Twisted does, by giving up on the connection.
    """
    if (
        parser.state != STATUS
        or parser._buffer
        or parser._busyReceiving
        or not parser.line_mode
        or parser.paused
        or parser.request.method == b"HEAD"
    ):
        return None
    end = data.find(b"\r\n\r\n")
    if end <= 0 or end > parser.MAX_LENGTH:
        return None
    head = data[:end]
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        return None  # a bare LF or CR: Twisted's line rules apply
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or line[0] in b" \t":
            return None  # folding, or no colon: Twisted decides what it means
        fields.append((name.lower(), value.strip()))
    parser._everReceivedData = True
    parser.statusReceived(lines[0])
    parser.state = HEADER
    control = parser.CONNECTION_CONTROL_HEADERS
    conn = parser.connHeaders._rawHeaders
    other = parser.headers._rawHeaders
    encode = _nameEncoder.encode
    for name, value in fields:
        (conn if name in control else other).setdefault(encode(name), []).append(value)
    return data[end + 2 :]

"""A request body already in memory, and the request that writes it at once.

Twisted's ``Request.writeTo`` frames a body of known length through a
``LengthEnforcingConsumer``, registers the producer with the transport,
chains three Deferreds and unregisters it again: about 8 µs a request for a
body that is one ``bytes`` object (issue 8).  :class:`OneWriteRequest` writes
the head (with Twisted's own ``_writeHeaders``: same bytes, same checks) and
the body of a :class:`BytesProducer` in one go and returns a fired Deferred,
which is what Twisted's path amounts to for such a body; any other producer,
or a body already released, takes Twisted's path unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web._newclient import Request
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from .request import HTTPRequest

__all__ = ["BODYLESS_METHODS", "BytesProducer", "OneWriteRequest", "body_for", "head_parts"]

#: Methods sent without a body: no producer, hence no ``Content-Length: 0``.
BODYLESS_METHODS = frozenset((b"GET", b"HEAD"))


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one go.

    Cheaper than FileBodyProducer, which schedules a cooperator task per body.
    """

    __slots__ = ("_body", "length")

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body
        self.length = len(body)

    @property
    def body(self) -> bytes | None:
        """The bytes, or None once released."""
        return self._body

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._body is None:
            return fail(RuntimeError("the request body was released: the response had begun"))
        consumer.write(self._body)
        return succeed(None)

    def release(self) -> None:
        """The response has begun, so the request will not be sent again:
        let the body go (Twisted holds the request until the response ends,
        which for a stream is minutes)."""
        self._body = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def body_for(request: HTTPRequest, body: BytesProducer) -> BytesProducer | None:
    """The body producer to send ``request`` with: None for a GET."""
    return None if request.method in BODYLESS_METHODS else body


class OneWriteRequest(Request):
    """Twisted's ``Request``, writing a :class:`BytesProducer` body with its
    head instead of producing it through a length-enforcing consumer.

    :ivar parts: the head as Twisted writes it, split where the
        ``Content-Length`` line goes (see :func:`head_parts`), when the
        sender had it already; None to have Twisted's ``_writeHeaders`` make
        it.
    """

    parts: tuple[bytes, bytes] | None = None

    @classmethod
    def with_head(
        cls,
        method: bytes,
        uri: bytes,
        headers: Any,
        body: Any,
        persistent: bool,
        parsed: Any,
        parts: tuple[bytes, bytes],
    ) -> OneWriteRequest:
        """A request whose head :func:`head_parts` made (and so checked)
        already: what ``Request.__init__`` sets, without checking the method
        and URI again."""
        request = cls.__new__(cls)
        request.method = method
        request.uri = uri
        request.headers = headers
        request.bodyProducer = body
        request.persistent = persistent
        request._parsedURI = parsed
        request.parts = parts
        return request

    def writeTo(self, transport: Any) -> Deferred[None]:
        producer = self.bodyProducer
        parts = self.parts
        if type(producer) is BytesProducer:
            body = producer.body
            if body is not None:
                if parts is None:
                    # Raises as Twisted's path does (one Host, a valid method and
                    # URI); HTTP11ClientProtocol.request turns that into a failure.
                    self._writeHeaders(transport, b"Content-Length: %d\r\n" % len(body))  # type: ignore[no-untyped-call]
                else:
                    transport.write(b"%sContent-Length: %d\r\n%s" % (parts[0], len(body), parts[1]))
                transport.write(body)
                return succeed(None)
        elif producer is None and parts is not None:
            transport.write(parts[0] + parts[1])
            return succeed(None)
        return super().writeTo(transport)  # type: ignore[no-any-return,no-untyped-call]


class _Lines:
    """A transport that keeps what ``Request._writeHeaders`` writes."""

    lines: list[bytes] = []

    def writeSequence(self, lines: list[bytes]) -> None:
        self.lines = lines

    def write(self, data: bytes) -> None:
        self.lines = [data]


_LENGTH_SLOT = b"Content-Length: \x00\r\n"


def head_parts(method: bytes, uri: bytes, headers: Any, persistent: bool) -> tuple[bytes, bytes] | None:
    """A request head as Twisted's ``_writeHeaders`` writes it, in two parts:
    before and after the ``Content-Length`` line, so that a head used over
    and over is made (and checked: one Host, a valid method and URI) once.
    None when Twisted refuses it: its own path then raises in context."""
    out = _Lines()
    try:
        Request._construct(method, uri, headers, None, persistent=persistent)._writeHeaders(out, _LENGTH_SLOT)
    except Exception:
        return None
    lines = out.lines
    at = next((i for i, line in enumerate(lines) if line is _LENGTH_SLOT), None)
    if at is None:  # a Twisted that writes its head some other way
        return None
    return b"".join(lines[:at]), b"".join(lines[at + 1:])

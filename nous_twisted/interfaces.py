"""The two backend contracts, as zope interfaces."""

from __future__ import annotations

from zope.interface import Interface


class IHTTPBackend(Interface):
    """Moves one non-streaming POST: bytes out, status, headers and bytes back."""

    def post(request, *, timeout, connect_timeout, agent, reactor):  # type: ignore[no-untyped-def]
        """
        Send ``request`` (a :class:`nous_twisted.request.HTTPRequest`).

        :return: a Deferred firing with a
            :class:`nous_twisted.response.RawResponse` for ANY status (the
            caller turns statuses and bodies into values and errors), or
            failing with a :class:`nous_twisted.errors.TransportError`.
            Cancelling it aborts the connection.
        """


class IStreamBackend(Interface):
    """Moves one streaming POST and feeds its bytes to the shared decoders."""

    def stream(request, *, timeout, connect_timeout, format, agent, reactor):  # type: ignore[no-untyped-def]
        """
        Start ``request`` and return a :class:`nous_twisted.EventStream` at once.
        Transport failures arrive as a ``StreamError`` event, never raised.
        """

"""nous_twisted: a Twisted-native HTTP transport for LLM APIs."""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .api import configure, post, stream
from .backends.agent import AgentBackend
from .backends.agent_stream import AgentStreamBackend
from .backends.treq import TreqBackend
from .backends.treq_stream import TreqStreamBackend
from .client import Client
from .errors import (
    AuthenticationError,
    BackendConfigError,
    BadRequestError,
    BufferOverflow,
    ConflictError,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    InternalServerError,
    NotFoundError,
    NousHTTPError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    RequestTimeout,
    StreamTruncated,
    TLSError,
    TransportError,
    UnprocessableEntityError,
)
from .events import StreamDone, StreamError
from .eventstream import EventStream
from .headers import ResponseHeaders
from .interfaces import IHTTPBackend, IStreamBackend
from .observers import CallEvent, observe
from .response import Reply
from .retry import RetryPolicy
from .settings import PoolSettings
from .shared import pool_stats, shutdown

if TYPE_CHECKING:
    from .backends.h2 import H2Backend
    from .backends.h2_stream import H2StreamBackend


def __getattr__(name: str) -> Any:
    # The h2 backends need the 'http2' extra: imported on first use, so that
    # importing nous_twisted never needs it.
    if name not in ("H2Backend", "H2StreamBackend"):
        raise AttributeError(f"module 'nous_twisted' has no attribute {name!r}")
    try:
        from .backends import h2, h2_stream
    except ImportError as e:
        raise ImportError(f"{name} needs the 'http2' extra: pip install 'nous-twisted[http2]' ({e})") from e
    return h2.H2Backend if name == "H2Backend" else h2_stream.H2StreamBackend


__all__ = [
    "AgentBackend",
    "AgentStreamBackend",
    "AuthenticationError",
    "H2Backend",
    "H2StreamBackend",
    "BackendConfigError",
    "BadRequestError",
    "BufferOverflow",
    "CallEvent",
    "Client",
    "ConflictError",
    "ConnectError",
    "DecodeError",
    "EventStream",
    "HTTPStatusError",
    "IHTTPBackend",
    "IStreamBackend",
    "InternalServerError",
    "NotFoundError",
    "NousHTTPError",
    "PermissionDeniedError",
    "PoolSettings",
    "ProviderError",
    "RateLimitError",
    "Reply",
    "RequestTimeout",
    "ResponseHeaders",
    "RetryPolicy",
    "StreamDone",
    "StreamError",
    "StreamTruncated",
    "TLSError",
    "TransportError",
    "TreqBackend",
    "TreqStreamBackend",
    "UnprocessableEntityError",
    "__version__",
    "configure",
    "observe",
    "pool_stats",
    "post",
    "shutdown",
    "stream",
]

"""nous_twisted: a Twisted-native HTTP transport for LLM APIs."""

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

__all__ = [
    "AgentBackend",
    "AgentStreamBackend",
    "AuthenticationError",
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

"""nous_twisted: a Twisted-native HTTP transport for LLM APIs."""

from .api import configure, post, stream
from .backends.agent import AgentBackend
from .backends.agent_stream import AgentStreamBackend
from .backends.treq import TreqBackend
from .backends.treq_stream import TreqStreamBackend
from .errors import (
    BackendConfigError,
    BufferOverflow,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    NousHTTPError,
    ProviderError,
    RequestTimeout,
    StreamTruncated,
    TLSError,
    TransportError,
)
from .events import StreamDone, StreamError
from .eventstream import EventStream
from .interfaces import IHTTPBackend, IStreamBackend
from .settings import PoolSettings
from .shared import pool_stats, shutdown

__version__ = "0.1.0"

__all__ = [
    "AgentBackend",
    "AgentStreamBackend",
    "EventStream",
    "BackendConfigError",
    "BufferOverflow",
    "ConnectError",
    "DecodeError",
    "HTTPStatusError",
    "IHTTPBackend",
    "IStreamBackend",
    "NousHTTPError",
    "PoolSettings",
    "ProviderError",
    "RequestTimeout",
    "StreamDone",
    "StreamError",
    "StreamTruncated",
    "TLSError",
    "TransportError",
    "TreqBackend",
    "TreqStreamBackend",
    "configure",
    "pool_stats",
    "post",
    "shutdown",
    "stream",
]

"""nous_twisted: a Twisted-native HTTP transport for LLM APIs."""

from .api import post
from .backends.agent import AgentBackend
from .backends.treq import TreqBackend
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
from .interfaces import IHTTPBackend, IStreamBackend
from .pool import shutdown
from .settings import PoolSettings, configure

__version__ = "0.1.0"

__all__ = [
    "AgentBackend",
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
    "configure",
    "post",
    "shutdown",
]

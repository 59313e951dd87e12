"""nous_twisted: a Twisted-native HTTP transport for LLM APIs."""

from typing import TYPE_CHECKING, Any

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
from .shared import shutdown

if TYPE_CHECKING:
    from .backends.h2 import H2Backend
    from .backends.h2_stream import H2StreamBackend

__version__ = "0.1.0"


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
    "EventStream",
    "H2Backend",
    "H2StreamBackend",
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
    "post",
    "shutdown",
    "stream",
]

"""Proxies for the proxy tests, all on loopback.

- :class:`ProxyPy`: the real ``proxy.py`` (PyPI) in a subprocess, optionally
  with basic auth; it forwards plain-HTTP requests and CONNECT tunnels.
- :class:`ScriptProxy`: a minimal Twisted forward proxy of our own that
  either tunnels (CONNECT to a loopback address only) or misbehaves on cue:
  a fixed reply, a close, a stall.  It can listen with TLS, to be an
  ``https://`` proxy.  It records every request head it receives.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet.protocol import ClientFactory, Factory, Protocol

from .helpers import get_reactor


class ProxyPy:
    """``python -m proxy`` on 127.0.0.1, an ephemeral port."""

    def __init__(self, basic_auth: str | None = None) -> None:
        self.basic_auth = basic_auth
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProxyPy:
        fd, port_file = tempfile.mkstemp(suffix=".port")
        os.close(fd)
        os.unlink(port_file)
        cmd = [
            sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0", "--port-file", port_file,
            "--num-workers", "1", "--num-acceptors", "1", "--log-level", "ERROR",
        ]
        if self.basic_auth:
            cmd += ["--basic-auth", self.basic_auth]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    self.port = int(text.split()[0])
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        break
            except (OSError, ValueError):
                pass
            if self._proc.poll() is not None:
                raise RuntimeError("proxy.py exited at start")
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("proxy.py did not start in 30 s")
        os.unlink(port_file)
        return self

    def url(self, credentials: str | None = None) -> str:
        who = f"{credentials}@" if credentials else ""
        return f"http://{who}127.0.0.1:{self.port}"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Upstream(Protocol):
    def __init__(self, downstream: _ScriptProtocol) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        down = self.downstream.transport
        self.downstream.upstream = self
        down.write(b"HTTP/1.1 200 Connection established\r\n\r\n")  # type: ignore[union-attr]
        # Backpressure both ways, as a real proxy relays: a full side pauses the other.
        down.registerProducer(self.transport, True)  # type: ignore[union-attr]
        self.transport.registerProducer(down, True)  # type: ignore[union-attr]
        down.resumeProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.downstream.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.loseConnection()


class _ScriptProtocol(Protocol):
    def connectionMade(self) -> None:
        self.proxy: ScriptProxy = self.factory.proxy  # type: ignore[attr-defined]
        self.proxy.connections.append(self)
        self.buffer = b""
        self.upstream: _Upstream | None = None
        self.answered = False
        if self.proxy.mode == "close-at-once":
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is not None:
            self.proxy.relayed.append(data)
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            return
        if self.answered:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.answered = True
        self.proxy.heads.append(head)
        mode = self.proxy.mode
        if mode == "stall":
            return
        if mode == "close" or mode == "close-at-once":
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if mode == "reply":
            self.transport.write(self.proxy.reply)  # type: ignore[union-attr]
            if self.proxy.close_after_reply:
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        # tunnel
        method, target, _ = head.split(b"\r\n")[0].split(b" ", 2)
        host, _, port = target.decode().rpartition(":")
        host = host.strip("[]")
        if method != b"CONNECT" or not _loopback(host):
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.transport.pauseProducing()  # type: ignore[union-attr]
        factory = ClientFactory.forProtocol(lambda: _Upstream(self))  # type: ignore[arg-type]
        factory.noisy = False
        get_reactor().connectTCP(host, int(port), factory)
        self.proxy.tunnels += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True  # (Protocol.connected stays 1 after the loss)
        self.proxy.closed += 1
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()


class ScriptProxy:
    """A forward proxy on 127.0.0.1.

    :param mode: ``"tunnel"`` (CONNECT to loopback targets), ``"reply"``
        (answer every request head with ``reply``), ``"close"`` (close on the
        first request head), ``"stall"`` (never answer).
    :param tls: server TLS options: listen as an ``https://`` proxy.
    """

    def __init__(self, mode: str = "tunnel", reply: bytes = b"", close_after_reply: bool = True, tls: Any = None) -> None:
        self.mode = mode
        self.reply = reply
        self.close_after_reply = close_after_reply
        self.tls = tls
        self.heads: list[bytes] = []
        self.relayed: list[bytes] = []  # what the client sent through the tunnels
        self.connections: list[_ScriptProtocol] = []
        self.closed = 0
        self.tunnels = 0
        self.port: Any = None

    def listen(self) -> ScriptProxy:
        factory = Factory.forProtocol(_ScriptProtocol)
        factory.proxy = self  # type: ignore[attr-defined]
        factory.noisy = False
        if self.tls is not None:
            self.port = get_reactor().listenSSL(0, factory, self.tls, interface="127.0.0.1")
        else:
            self.port = get_reactor().listenTCP(0, factory, interface="127.0.0.1")
        return self

    def url(self, credentials: str | None = None, host: str = "127.0.0.1") -> str:
        who = f"{credentials}@" if credentials else ""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{who}{host}:{self.port.getHost().port}"

    async def stop(self) -> None:
        for p in self.connections:
            # aborting a lost TLS connection again fails in Twisted's TLS layer
            if p.transport is not None and p.connected and not getattr(p, "lost", False):
                p.transport.abortConnection()
            if p.upstream is not None and p.upstream.transport is not None:
                p.upstream.transport.abortConnection()
        await self.port.stopListening()

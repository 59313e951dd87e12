"""Shared fixtures: a clean library state per test, loopback servers, TLS material.

Run twice: ``pytest`` (default reactor) and ``pytest --reactor=asyncio``.
The pure-module tests also run without the reactor plugin
(``pytest -p no:twisted``), as ``tox -e mutation`` runs them: then no test
can have touched the reactor, and nothing here does either.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from hypothesis import settings
from twisted.internet.ssl import PrivateCertificate

import nous_twisted
from nous_twisted import observers as observers_module
from nous_twisted import request as request_module
from nous_twisted import resolve as resolve_module
from nous_twisted.testing import FakeLLMServer

# The mutation run (tox -e mutation) must give the same verdict every time:
# fixed examples, no example database, no deadline (mutmut's tracing slows
# every call down, and a deadline would turn that into a spurious kill).
settings.register_profile("mutation", derandomize=True, database=None, deadline=None, print_blob=False)


def get_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Every test checks its URLs itself: a URL validated by an earlier test
    # would otherwise skip the checks (and a mutated check would go unseen).
    request_module._url_cache.clear()
    request_module._headers_cache.clear()
    resolve_module._builtin_instances.clear()
    monkeypatch.delenv("NOUS_HTTP_BACKEND", raising=False)
    monkeypatch.delenv("NOUS_HTTP_STREAM_BACKEND", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    # A proxy in the machine's environment would route the tests' loopback calls.
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    nous_twisted.configure(
        http_backend=None, http_stream_backend=None, pool=nous_twisted.PoolSettings(), ca_bundle=None, retries=None,
        proxy=None, trust_env=True,
    )
    observers_module._observers.clear()
    yield
    # Without the reactor plugin (-p no:twisted: the pure tests under mutmut)
    # no reactor runs, so no test opened a connection and there is nothing to
    # shut down; with it, every test ends with the pool closed.
    if request.config.pluginmanager.has_plugin("twisted"):
        pytest_twisted.blockon(nous_twisted.shutdown())
    nous_twisted.configure(
        http_backend=None, http_stream_backend=None, pool=nous_twisted.PoolSettings(), ca_bundle=None, retries=None,
        proxy=None, trust_env=True,
    )
    observers_module._observers.clear()


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer().start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls_options(ca: trustme.CA, *names: str) -> Any:
    cert = ca.issue_cert(*names)
    pem = cert.private_key_and_cert_chain_pem.bytes()
    return PrivateCertificate.loadPEM(pem).options()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "ca.pem")
    ca.cert_pem.write_to_path(path)
    return path


BACKENDS = ["treq", "agent"]


@pytest_twisted.async_yield_fixture
async def scripted(ca: trustme.CA, ca_file: str) -> AsyncIterator[Any]:
    """A scripted HTTP/2 server on TLS (ALPN h2 only), its CA trusted by the library."""
    from .h2server import ScriptedH2Server, tls_options

    nous_twisted.configure(ca_bundle=ca_file)
    server = ScriptedH2Server(get_reactor(), tls_options(ca, [b"h2"])).listen()
    yield server
    await server.stop()

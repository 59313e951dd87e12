"""Backend resolution: per call > NOUS_HTTP_BACKEND > configure() > treq, on every call."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import pytest_twisted
from zope.interface import implementer

import nous_twisted
from nous_twisted import AgentBackend, BackendConfigError, IHTTPBackend, TreqBackend, post
from nous_twisted.resolve import resolve_http_backend
from nous_twisted.testing import FakeLLMServer


@implementer(IHTTPBackend)
class CountingBackend(AgentBackend):
    """A custom backend, the usual way: subclass a built-in one."""

    calls = 0

    def post(self, request: Any, **kw: Any) -> Any:
        type(self).calls += 1
        return super().post(request, **kw)


class NotABackend:
    pass


@pytest.fixture
def custom_module() -> Any:
    mod = types.ModuleType("nous_custom_backends")
    mod.CountingBackend = CountingBackend  # type: ignore[attr-defined]
    mod.NotABackend = NotABackend  # type: ignore[attr-defined]
    sys.modules["nous_custom_backends"] = mod
    yield mod
    del sys.modules["nous_custom_backends"]


def test_default_is_treq() -> None:
    assert isinstance(resolve_http_backend(None), TreqBackend)


def test_app_config_beats_default() -> None:
    nous_twisted.configure(http_backend="agent")
    assert isinstance(resolve_http_backend(None), AgentBackend)


def test_env_beats_app_config(monkeypatch: pytest.MonkeyPatch) -> None:
    nous_twisted.configure(http_backend="agent")
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "treq")
    assert isinstance(resolve_http_backend(None), TreqBackend)


def test_per_call_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "treq")
    assert isinstance(resolve_http_backend("agent"), AgentBackend)


def test_env_read_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "agent")
    assert isinstance(resolve_http_backend(None), AgentBackend)
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "treq")
    assert isinstance(resolve_http_backend(None), TreqBackend)
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "")
    assert isinstance(resolve_http_backend(None), TreqBackend)


@pytest.mark.parametrize("path", ["nous_custom_backends.CountingBackend", "nous_custom_backends:CountingBackend"])
def test_dotted_paths(custom_module: Any, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOUS_HTTP_BACKEND", path)
    assert isinstance(resolve_http_backend(None), CountingBackend)
    monkeypatch.delenv("NOUS_HTTP_BACKEND")
    nous_twisted.configure(http_backend=path)
    assert isinstance(resolve_http_backend(None), CountingBackend)
    assert isinstance(resolve_http_backend(path), CountingBackend)


def test_class_and_instance_per_call() -> None:
    assert isinstance(resolve_http_backend(CountingBackend), CountingBackend)
    inst = CountingBackend()
    assert resolve_http_backend(inst) is inst


@pytest.mark.parametrize(
    "value,problem",
    [
        ("hackney", "unknown backend name"),
        ("no_such_pkg.mod.Backend", "cannot import it"),
        ("nous_custom_backends.Missing", "cannot import it"),
        ("nous_custom_backends.NotABackend", "does not implement IHTTPBackend"),
    ],
)
def test_bad_values_name_setting_value_and_forms(
    custom_module: Any, monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    accepted = "'treq', 'agent', a dotted path 'pkg.mod.Class' or 'pkg.mod:Class'"
    # the environment
    monkeypatch.setenv("NOUS_HTTP_BACKEND", value)
    with pytest.raises(BackendConfigError) as info:
        resolve_http_backend(None)
    msg = str(info.value)
    assert "NOUS_HTTP_BACKEND" in msg and value in msg and problem in msg and accepted in msg
    assert info.value.setting == "the environment variable NOUS_HTTP_BACKEND"
    monkeypatch.delenv("NOUS_HTTP_BACKEND")
    # the per-call argument
    with pytest.raises(BackendConfigError) as info:
        resolve_http_backend(value)
    assert "backend= argument" in str(info.value) and value in str(info.value) and accepted in str(info.value)
    # the app config, checked when it is set
    with pytest.raises(BackendConfigError) as info:
        nous_twisted.configure(http_backend=value)
    assert "configure(http_backend=...)" in str(info.value) and accepted in str(info.value)
    assert nous_twisted.settings.current().http_backend is None  # unchanged


def test_object_that_is_not_a_backend() -> None:
    with pytest.raises(BackendConfigError, match="does not provide IHTTPBackend"):
        resolve_http_backend(NotABackend())
    with pytest.raises(BackendConfigError, match="does not implement IHTTPBackend"):
        resolve_http_backend(NotABackend)
    with pytest.raises(BackendConfigError, match="does not provide IHTTPBackend"):
        resolve_http_backend(42)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        resolve_http_backend("nope")


@pytest_twisted.ensureDeferred
async def test_resolution_reaches_the_wire(custom_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    CountingBackend.calls = 0
    async with FakeLLMServer() as server:
        monkeypatch.setenv("NOUS_HTTP_BACKEND", "nous_custom_backends:CountingBackend")
        await post(server.chat_url, {"model": "m"})
        assert CountingBackend.calls == 1
        await post(server.chat_url, {"model": "m"}, backend="treq")
        assert CountingBackend.calls == 1
        monkeypatch.delenv("NOUS_HTTP_BACKEND")
        await post(server.chat_url, {"model": "m"})
        assert CountingBackend.calls == 1
        nous_twisted.configure(http_backend=CountingBackend)
        await post(server.chat_url, {"model": "m"})
        assert CountingBackend.calls == 2

"""Backend resolution, exact: every accepted form (name, dotted path, class,
instance) for both kinds, the order per call > environment > configure() >
default, and each refusal's whole message.  Reactor-free (these run under
``tox -e mutation``)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from zope.interface import implementer

import nous_twisted
from nous_twisted import (
    AgentBackend,
    AgentStreamBackend,
    BackendConfigError,
    IHTTPBackend,
    IStreamBackend,
    TreqBackend,
    TreqStreamBackend,
)
from nous_twisted.resolve import check_config, resolve_http_backend, resolve_stream_backend

HTTP_ACCEPTED = (
    "'treq', 'agent', a dotted path 'pkg.mod.Class' or 'pkg.mod:Class', "
    "or a class or instance providing IHTTPBackend"
)
STREAM_ACCEPTED = HTTP_ACCEPTED.replace("IHTTPBackend", "IStreamBackend")


@implementer(IStreamBackend)
class NeedsArgs(AgentStreamBackend):
    def __init__(self, x: int) -> None:
        raise AssertionError("never called")


class Outer:
    @implementer(IHTTPBackend)
    class Inner(AgentBackend):
        pass


@pytest.fixture
def mod() -> Iterator[Any]:
    m = types.ModuleType("nous_pure_resolve_mod")
    m.Outer = Outer  # type: ignore[attr-defined]
    m.NeedsArgs = NeedsArgs  # type: ignore[attr-defined]
    sys.modules[m.__name__] = m
    yield m
    del sys.modules[m.__name__]


def test_configure_takes_a_stream_backend_class() -> None:
    nous_twisted.configure(http_stream_backend=AgentStreamBackend)
    assert type(resolve_stream_backend(None)) is AgentStreamBackend
    nous_twisted.configure(http_backend=AgentBackend)
    assert type(resolve_http_backend(None)) is AgentBackend


def test_configure_takes_an_instance_and_resolution_returns_it() -> None:
    inst = AgentStreamBackend()
    nous_twisted.configure(http_stream_backend=inst)
    assert resolve_stream_backend(None) is inst
    assert resolve_stream_backend(inst) is inst


def test_defaults_are_treq_of_each_kind() -> None:
    assert type(resolve_http_backend(None)) is TreqBackend
    assert type(resolve_stream_backend(None)) is TreqStreamBackend


@pytest.mark.parametrize("name, http, stream", [
    ("agent", AgentBackend, AgentStreamBackend),
    (" agent\t", AgentBackend, AgentStreamBackend),
    ("treq", TreqBackend, TreqStreamBackend),
])
def test_names_per_call_env_and_config(monkeypatch: pytest.MonkeyPatch, name: str, http: type, stream: type) -> None:
    assert type(resolve_http_backend(name)) is http
    assert type(resolve_stream_backend(name)) is stream
    nous_twisted.configure(http_backend=name, http_stream_backend=name)
    assert type(resolve_http_backend(None)) is http
    assert type(resolve_stream_backend(None)) is stream
    nous_twisted.configure(http_backend=None, http_stream_backend=None)
    monkeypatch.setenv("NOUS_HTTP_BACKEND", name)
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", name)
    assert type(resolve_http_backend(None)) is http
    assert type(resolve_stream_backend(None)) is stream


def test_builtin_instances_are_shared_per_kind() -> None:
    a = resolve_http_backend("agent")
    assert resolve_http_backend("agent") is a
    assert resolve_http_backend(" agent ") is a
    nous_twisted.configure(http_backend="agent")
    assert resolve_http_backend(None) is a
    s = resolve_stream_backend("agent")
    assert s is not a and resolve_stream_backend("agent") is s
    assert resolve_http_backend(None) is resolve_http_backend(None)
    assert resolve_stream_backend(None) is resolve_stream_backend(None)


def test_order_per_call_env_config_default(monkeypatch: pytest.MonkeyPatch) -> None:
    nous_twisted.configure(http_backend="agent", http_stream_backend="agent")
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "treq")
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", "treq")
    assert type(resolve_http_backend(None)) is TreqBackend  # env beats config
    assert type(resolve_stream_backend(None)) is TreqStreamBackend
    assert type(resolve_http_backend("agent")) is AgentBackend  # per call beats env
    assert type(resolve_stream_backend("agent")) is AgentStreamBackend
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "  ")  # blank: as if unset
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", "")
    assert type(resolve_http_backend(None)) is AgentBackend
    assert type(resolve_stream_backend(None)) is AgentStreamBackend


@pytest.mark.parametrize("path", [
    "nous_twisted.backends.agent_stream.AgentStreamBackend",
    "nous_twisted.backends.agent_stream:AgentStreamBackend",
    " nous_twisted.backends.agent_stream:AgentStreamBackend ",
])
def test_dotted_paths(path: str) -> None:
    assert type(resolve_stream_backend(path)) is AgentStreamBackend
    nous_twisted.configure(http_stream_backend=path)
    assert type(resolve_stream_backend(None)) is AgentStreamBackend


def test_nested_attribute_path(mod: Any) -> None:
    assert type(resolve_http_backend("nous_pure_resolve_mod:Outer.Inner")) is Outer.Inner


def refusal(setting: str, value: Any, problem: str, accepted: str = HTTP_ACCEPTED) -> str:
    return f"{setting} = {value!r}: {problem}. Accepted: {accepted}."


def test_refusals_are_exact(mod: Any) -> None:
    arg = "the backend= argument"
    cases: list[tuple[Any, str]] = [
        ("nope", "unknown backend name"),
        (":X", "cannot import it (ImportError: ':X' is not of the form 'pkg.mod.Class' or 'pkg.mod:Class')"),
        ("mod.", "cannot import it (ImportError: 'mod.' is not of the form 'pkg.mod.Class' or 'pkg.mod:Class')"),
        ("nous_pure_resolve_mod:Nope", "cannot import it (ImportError: module 'nous_pure_resolve_mod' has no "
         "attribute 'Nope')"),
        ("nous_pure_resolve_mod:Outer.Nope", "cannot import it (ImportError: module 'nous_pure_resolve_mod' has "
         "no attribute 'Outer.Nope')"),
        ("no_such_module_xyz.X", "cannot import it (ModuleNotFoundError: No module named 'no_such_module_xyz')"),
        (NeedsArgs, "the class does not implement IHTTPBackend"),
        (object(), "the object does not provide IHTTPBackend"),
    ]
    for value, problem in cases:
        with pytest.raises(BackendConfigError) as e:
            resolve_http_backend(value)
        assert str(e.value) == refusal(arg, value, problem)
        assert e.value.setting == arg
        assert e.value.value is value or e.value.value == value.strip()


def test_the_shown_value_is_the_one_given(mod: Any) -> None:
    with pytest.raises(BackendConfigError) as e:
        resolve_stream_backend(" nous_pure_resolve_mod:Nope ")
    assert e.value.value == "nous_pure_resolve_mod:Nope"
    with pytest.raises(BackendConfigError) as e:
        resolve_stream_backend(" nope ")
    assert e.value.value == " nope "
    assert str(e.value) == refusal("the stream_backend= argument", " nope ", "unknown backend name", STREAM_ACCEPTED)


def test_a_class_that_needs_arguments(mod: Any) -> None:
    with pytest.raises(BackendConfigError) as e:
        resolve_stream_backend("nous_pure_resolve_mod.NeedsArgs")
    assert str(e.value) == refusal(
        "the stream_backend= argument",
        "nous_pure_resolve_mod.NeedsArgs",
        "the class cannot be instantiated with no arguments "
        "(NeedsArgs.__init__() missing 1 required positional argument: 'x')",
        STREAM_ACCEPTED,
    )
    assert isinstance(e.value.__cause__, TypeError)


def test_the_kinds_are_not_mixed() -> None:
    with pytest.raises(BackendConfigError) as e:
        nous_twisted.configure(http_stream_backend=AgentBackend)
    assert str(e.value) == refusal(
        "configure(http_stream_backend=...)", AgentBackend, "the class does not implement IStreamBackend",
        STREAM_ACCEPTED)
    inst = AgentStreamBackend()
    with pytest.raises(BackendConfigError) as e:
        nous_twisted.configure(http_backend=inst)
    assert str(e.value) == refusal("configure(http_backend=...)", inst, "the object does not provide IHTTPBackend")


def test_env_refusal_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", "nope")
    with pytest.raises(BackendConfigError) as e:
        resolve_stream_backend(None)
    assert str(e.value) == refusal(
        "the environment variable NOUS_HTTP_STREAM_BACKEND", "nope", "unknown backend name", STREAM_ACCEPTED)


def test_check_config() -> None:
    assert check_config("http_backend", None) is None
    assert check_config("http_stream_backend", None) is None
    check_config("http_stream_backend", "agent")
    with pytest.raises(BackendConfigError) as e:
        check_config("http_stream_backend", TreqBackend)
    assert e.value.setting == "configure(http_stream_backend=...)"
    check_config("http_backend", TreqBackend)


def test_path_forms_split_where_documented(mod: Any) -> None:
    # 'pkg.mod:Class' splits at the first ':', 'pkg.mod.Class' at the last '.'
    with pytest.raises(BackendConfigError) as e:
        resolve_http_backend("nous_pure_resolve_mod:Outer:Inner")
    assert "module 'nous_pure_resolve_mod' has no attribute 'Outer:Inner'" in str(e.value)
    with pytest.raises(BackendConfigError) as e:
        resolve_http_backend("nous_pure_resolve_mod.Outer.Inner")
    assert "cannot import it (ModuleNotFoundError: No module named 'nous_pure_resolve_mod.Outer'" in str(e.value)


def test_a_builtin_whose_extra_is_missing_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from nous_twisted import resolve

    resolve._builtin_instances.clear()
    # h2 is importable here (the test extra): the name resolves to the class
    assert type(resolve._coerce("http", "h2", "the backend= argument")).__name__ == "H2Backend"
    assert type(resolve._coerce("stream", " h2 ", "x")).__name__ == "H2StreamBackend"
    # without it, the error says which extra to install, naming the setting
    monkeypatch.setitem(sys.modules, "h2", None)
    resolve._builtin_instances.clear()
    with pytest.raises(BackendConfigError) as e:
        resolve._coerce("http", "h2", "the backend= argument")
    assert str(e.value) == (
        "the backend= argument = 'h2': the 'h2' backend needs the 'http2' extra: pip install 'nous-twisted[http2]'. "
        f"Accepted: {resolve._ACCEPTED.format(iface='IHTTPBackend')}."
    )
    assert "None" not in str(e.value)
    assert e.value.setting == "the backend= argument" and e.value.value == "h2"
    with pytest.raises(BackendConfigError, match="NOUS_HTTP_STREAM_BACKEND = ' h2 '"):
        resolve._coerce("stream", " h2 ", "the environment variable NOUS_HTTP_STREAM_BACKEND")
    # other names need no extra
    resolve._check_extra("treq", "s", "treq", "a")

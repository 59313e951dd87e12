"""Choosing a backend: per call > environment > app config > default.

Evaluated on every call, with no caching, so that a changed environment
variable or ``configure()`` takes effect on the next request.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from zope.interface.interface import InterfaceClass

from .errors import BackendConfigError
from .interfaces import IHTTPBackend, IStreamBackend
from .settings import current

ENV_HTTP = "NOUS_HTTP_BACKEND"
ENV_STREAM = "NOUS_HTTP_STREAM_BACKEND"

_ACCEPTED = (
    "'treq', 'agent', a dotted path 'pkg.mod.Class' or 'pkg.mod:Class', "
    "or a class or instance providing {iface}"
)

# name -> (interface, builtin names -> dotted class paths)
_KINDS: dict[str, tuple[InterfaceClass, dict[str, str]]] = {
    "http": (
        IHTTPBackend,
        {
            "treq": "nous_twisted.backends.treq:TreqBackend",
            "agent": "nous_twisted.backends.agent:AgentBackend",
            "h2": "nous_twisted.backends.h2:H2Backend",
        },
    ),
    "stream": (
        IStreamBackend,
        {
            "treq": "nous_twisted.backends.treq_stream:TreqStreamBackend",
            "agent": "nous_twisted.backends.agent_stream:AgentStreamBackend",
            "h2": "nous_twisted.backends.h2_stream:H2StreamBackend",
        },
    ),
}

# Built-in names that need an extra installed: name -> (module, extra).
_EXTRAS = {"h2": ("h2", "http2")}

# Built-in backends hold no per-call state: one instance each is enough.
_builtin_instances: dict[str, Any] = {}
_environ = os.environ


def _import(path: str) -> Any:
    if ":" in path:
        mod_name, _, attr = path.partition(":")
    else:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise ImportError(f"{path!r} is not of the form 'pkg.mod.Class' or 'pkg.mod:Class'")
    module = importlib.import_module(mod_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {mod_name!r} has no attribute {attr!r}") from None
    return obj


def _check_extra(name: str, setting: str, value: Any, accepted: str) -> None:
    """A built-in backend whose extra is not installed: say which to install."""
    need = _EXTRAS.get(name)
    if need is None:
        return
    module, extra = need
    try:
        importlib.import_module(module)
    except ImportError:
        raise BackendConfigError(
            setting, value, f"the {name!r} backend needs the {extra!r} extra: pip install 'nous-twisted[{extra}]'",
            accepted,
        ) from None


def _coerce(kind: str, value: Any, setting: str) -> Any:
    iface, builtins = _KINDS[kind]
    accepted = _ACCEPTED.format(iface=iface.__name__)
    shown = value  # errors name the value as the user wrote it
    if isinstance(value, str):
        name = value.strip()
        key = f"{kind}:{name}"
        inst = _builtin_instances.get(key)
        if inst is not None:
            return inst
        if name in builtins:
            _check_extra(name, setting, value, accepted)
            inst = _import(builtins[name])()
            _builtin_instances[key] = inst
            return inst
        if "." not in name and ":" not in name:
            raise BackendConfigError(setting, value, "unknown backend name", accepted)
        try:
            value = _import(name)
        except Exception as e:  # any import-time failure is a config error
            raise BackendConfigError(
                setting, name, f"cannot import it ({type(e).__name__}: {e})", accepted
            ) from e
    if isinstance(value, type):
        if not iface.implementedBy(value):
            raise BackendConfigError(
                setting, shown, f"the class does not implement {iface.__name__}", accepted
            )
        try:
            value = value()
        except Exception as e:
            raise BackendConfigError(
                setting, shown, f"the class cannot be instantiated with no arguments ({e})", accepted
            ) from e
    if not iface.providedBy(value):
        raise BackendConfigError(
            setting, shown, f"the object does not provide {iface.__name__}", accepted
        )
    return value


def resolve_http_backend(per_call: Any) -> Any:
    """The IHTTPBackend for one call."""
    return _resolve("http", per_call, "the backend= argument", ENV_HTTP, "http_backend")


def resolve_stream_backend(per_call: Any) -> Any:
    """The IStreamBackend for one call."""
    return _resolve(
        "stream", per_call, "the stream_backend= argument", ENV_STREAM, "http_stream_backend"
    )


def _resolve(kind: str, per_call: Any, arg: str, env_name: str, key: str) -> Any:
    if per_call is not None:
        if type(per_call) is str:  # a built-in name: no need to go further
            inst = _builtin_instances.get(f"{kind}:{per_call}")
            if inst is not None:
                return inst
        return _coerce(kind, per_call, arg)
    env = _environ.get(env_name)
    if env and env.strip():
        return _coerce(kind, env, f"the environment variable {env_name}")
    configured = getattr(current(), key)
    if configured is None:
        configured = "treq"
    if type(configured) is str:
        inst = _builtin_instances.get(kind + ":" + configured)
        if inst is not None:
            return inst
    return _coerce(kind, configured, f"configure({key}=...)" if configured != "treq" else "the default")


def check_config(key: str, value: Any) -> None:
    """Fail at configure() time for a value that names nothing usable."""
    if value is None:
        return
    kind = "http" if key == "http_backend" else "stream"
    _coerce(kind, value, f"configure({key}=...)")

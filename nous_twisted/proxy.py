"""Proxies as values: which proxy a request goes through, and its credentials.

Pure (no reactor, no I/O), like httpx's ``_config.Proxy`` and urllib3's
``util/proxy.py``.  :class:`Proxy` is a frozen value holding a validated
proxy address and, lifted out of the URL, a ready ``Proxy-Authorization``
value; its ``repr``/``str`` never show the credentials.  :func:`choose_proxy`
answers "which proxy for this URL?" with httpx's precedence:

1. the per-call ``proxy=`` (``None`` there means a direct connection);
2. the Client's ``proxy=`` (``None`` there means direct too);
3. ``configure(proxy=...)`` (``None`` there means "not configured");
4. with ``trust_env``, the environment: ``HTTPS_PROXY`` for https targets,
   ``HTTP_PROXY`` for http ones, ``ALL_PROXY`` for both, each read in upper
   and lower case with the lower-case one winning (an empty lower-case value
   unsets the upper-case one), as ``urllib.request.getproxies_environment``
   does and httpx and requests after it; ``NO_PROXY`` (or ``no_proxy``)
   names the targets that go direct.  As in httpx, ``NO_PROXY`` applies to
   the proxies of the environment only: a proxy set in code is used for
   every target.

``NO_PROXY`` entries, comma-separated (curl's and Go's rules, as httpx reads
them): ``*`` (no proxy at all); ``example.com`` (that host and every
subdomain); ``.example.com`` or ``*.example.com`` (subdomains only);
``127.0.0.1`` or ``::1`` (that address); ``10.0.0.0/8`` or ``fd00::/8``
(every address in the range, as requests and Go do); any of these with
``:port`` (that port only; the target's port is its default when the URL
gives none); ``http://host`` (that scheme only).  Loopback targets are
proxied unless ``NO_PROXY`` names them, as in httpx and requests.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from typing import Any
from urllib.parse import unquote, urlsplit

import idna

from .request import MIN_SECRET_LENGTH, HTTPRequest, display_url

DEFAULT_PORTS = {"http": 80, "https": 443}


class _Unset:
    """The "not given" marker: None is a value here (a direct connection)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True, repr=False)
class Proxy:
    """A forward proxy: where it is, and the credentials to give it.

    Build one with :meth:`from_url`.  Two proxies are equal (and share pooled
    connections) only when their address *and* credentials are equal.

    :ivar scheme: ``"http"`` (plain TCP to the proxy) or ``"https"`` (TLS to
        the proxy, verified against the same trust roots as targets).
    :ivar host: the host name (lower case, IDNA-encoded) or IP address,
        IPv6 without brackets.
    :ivar port: the port (80 or 443 when the URL gives none).
    :ivar authorization: the ``Proxy-Authorization`` value
        (``b"Basic ..."``), or None when the URL had no user info.
    """

    scheme: str
    host: str
    port: int
    authorization: bytes | None = field(default=None)

    @classmethod
    def from_url(cls, url: object, source: str = "proxy") -> Proxy:
        """Parse and check a proxy URL, ``http://[user:password@]host[:port]``
        or ``https://...``; ``source`` names the setting in error messages,
        which never show the user info."""
        return parse_proxy_url(url, source)

    @property
    def is_https(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        """``host:port``, IPv6 in brackets: what the proxy is called in messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The proxy's URL without credentials."""
        return f"{self.scheme}://{self.netloc}"

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """What to redact should anything echo the credentials, longest
        first: the header value, its token, and the password when it is long
        enough to be worth it (see ``request.MIN_SECRET_LENGTH``)."""
        if self.authorization is None:
            return ()
        token = self.authorization.partition(b" ")[2]
        found = [self.authorization, token]
        password = base64.b64decode(token).partition(b":")[2]
        if len(password) >= MIN_SECRET_LENGTH:
            found.append(password)
        return tuple(sorted(set(found), key=len, reverse=True))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        if self.authorization is None:
            return f"Proxy({self.url!r})"
        return f"Proxy({self.url!r}, credentials=<hidden>)"


# ---------------------------------------------------------------- parsing

_PORT = re.compile(r"[0-9]{1,5}")
# Parsed proxy URLs: choose_proxy() sees the same few strings on every call.
_parsed: dict[tuple[str, str], Proxy] = {}
_PARSED_CACHE_SIZE = 64


def parse_proxy_url(url: object, source: str = "proxy") -> Proxy:
    """See :meth:`Proxy.from_url`; a :class:`Proxy` is returned as it is."""
    if isinstance(url, Proxy):
        return url
    if not isinstance(url, str):
        raise TypeError(
            f"{source} must be a proxy URL such as 'http://proxy.example:3128' (or None), not {type(url).__name__}"
        )
    hit = _parsed.get((url, source))
    if hit is not None:
        return hit
    proxy = _parse(url, source)
    if len(_parsed) >= _PARSED_CACHE_SIZE:
        _parsed.clear()
    _parsed[(url, source)] = proxy
    return proxy


def _parse(url: str, source: str) -> Proxy:
    shown = display_url(url)

    def bad(problem: str) -> ValueError:
        return ValueError(f"{source} = {shown!r}: {problem}")

    if not url.strip():
        raise bad("the proxy URL is empty; give one such as 'http://proxy.example:3128', or None")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise bad("the proxy URL contains whitespace or control characters")
    if "://" not in url:
        raise bad("the proxy URL has no scheme; write it as 'http://host:port' (or 'https://host:port')")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise bad("the proxy URL does not parse (check the brackets around an IPv6 address)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise bad(
            f"proxy scheme {scheme!r} is not supported; use an 'http://' proxy (or 'https://' for TLS to the proxy)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise bad("a proxy URL is scheme://host:port only; remove the path, query or fragment" + _hint(url))
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, port = _split_hostport(hostport, bad, url)
    authorization = None
    if at:
        user, _, password = userinfo.partition(":")
        raw = unquote(user).encode("utf-8") + b":" + unquote(password).encode("utf-8")
        authorization = b"Basic " + base64.b64encode(raw)
    return Proxy(scheme, host, port if port is not None else DEFAULT_PORTS[scheme], authorization)


def _split_hostport(hostport: str, bad: Any, url: str) -> tuple[str, int | None]:
    """(host, port or None) of the part after the user info; the port text
    is never echoed (in 'http://user:pa/ss@host' it is a password)."""
    if hostport.startswith("["):
        # urlsplit has already refused unbalanced brackets.
        close = hostport.find("]")
        host, rest = hostport[1:close], hostport[close + 1 :]
        if rest and not rest.startswith(":"):
            raise bad("only ':port' may follow the IPv6 address of the proxy")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad("the proxy host is not a valid IPv6 address") from None
    else:
        if hostport.count(":") > 1:
            raise bad("write an IPv6 proxy address in brackets, as in 'http://[::1]:3128'")
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        if not host:
            raise bad("the proxy URL has no host")
        host = _hostname(host, bad)
    if port_text is None:
        return host, None
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise bad("the proxy port is not a number in 1-65535" + _hint(url))
    return host, int(port_text)


def _hint(text: str) -> str:
    if "@" in text:
        return " (if the password holds '/', '?', '#' or '@', percent-encode it: '%2F', '%3F', '%23', '%40')"
    return ""


def _hostname(host: str, bad: Any) -> str:
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise bad("the proxy host is not a valid host name") from None


# ---------------------------------------------------------------- NO_PROXY


@dataclass(frozen=True)
class _Rule:
    """One NO_PROXY entry.  ``kind``: "host" (the host and its subdomains),
    "sub" (subdomains only), "ip" (one address), "net" (a range)."""

    kind: str
    value: Any
    port: int | None = None
    scheme: str | None = None

    def matches(self, scheme: str, host: str, ip: Any, port: int) -> bool:
        if self.scheme is not None and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.kind == "ip":
            return ip is not None and ip == self.value
        if self.kind == "net":
            return ip is not None and ip.version == self.value.version and ip in self.value
        if self.kind == "sub":
            return host.endswith("." + self.value)
        return host == self.value or host.endswith("." + self.value)


def parse_no_proxy(value: str) -> tuple[_Rule, ...] | None:
    """The rules of a ``NO_PROXY`` value; None when it is (or holds) ``*``,
    which turns the environment's proxies off for every target.  Entries
    that mean nothing are skipped, as curl, Go and httpx skip them."""
    rules: list[_Rule] = []
    for entry in value.split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return None
        rule = _rule(entry)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _rule(entry: str) -> _Rule | None:
    scheme = None
    if "://" in entry:
        scheme, _, entry = entry.partition("://")
        entry = entry.rstrip("/")
    if not entry:
        return None
    # A bare address or range first: '::1' and 'fd00::/8' hold colons
    # that are not a port.
    whole = _ip_rule(entry, None, scheme)
    if whole is not None:
        return whole
    port = None
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            return None
        host, rest = entry[1:close], entry[close + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = entry.partition(":")
    if port_text:
        if not port_text.isdigit():
            return None
        port = int(port_text)
    ip_rule = _ip_rule(host, port, scheme)
    if ip_rule is not None:
        return ip_rule
    if host.startswith("*."):
        return _Rule("sub", host[2:], port, scheme) if host[2:] else None
    if host.startswith("."):
        return _Rule("sub", host[1:], port, scheme) if host[1:] else None
    # '*example.com' is curl's and httpx's "example.com and its subdomains".
    host = host.lstrip("*")
    return _Rule("host", host, port, scheme) if host else None


def _ip_rule(text: str, port: int | None, scheme: str | None) -> _Rule | None:
    try:
        if "/" in text:
            return _Rule("net", ipaddress.ip_network(text, strict=False), port, scheme)
        return _Rule("ip", ipaddress.ip_address(text), port, scheme)
    except ValueError:
        return None


# ---------------------------------------------------------------- the choice

_ENV_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
_LOWER = {name: name.lower() for name in _ENV_NAMES}
# Every variable read: the proxy ones in both cases, and REQUEST_METHOD (httpoxy).
_READ_NAMES = tuple(n for name in _ENV_NAMES for n in (name, name.lower())) + ("REQUEST_METHOD",)


class _RawEnviron:
    """``os.environ`` read through its raw bytes dictionary.

    Every request reads the environment (a change applies to the next
    call, as in requests), and ``os.environ.get`` encodes the name and
    decodes the value on each of the nine lookups: 5 of the 11 µs this
    module cost per request.  On POSIX, ``os.environ._data`` holds the same
    entries as bytes, kept in step by ``os.environ`` itself.
    """

    __slots__ = ("_data", "_encoding", "_read_keys")

    _keys: dict[str, bytes] = {}

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self._data = data
        self._encoding = os.sys.getfilesystemencoding()  # type: ignore[attr-defined]
        self._read_keys = [self._key(name) for name in _READ_NAMES]

    def _key(self, name: str) -> bytes:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = name.encode(self._encoding, "surrogateescape")
        return key

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._data.get(self._key(name))
        return default if value is None else value.decode(self._encoding, "surrogateescape")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._data

    def snapshot(self) -> tuple[bytes | None, ...]:
        """The raw values of every variable :func:`environment_proxies`
        reads, in one pass: what its result depends on."""
        return tuple(map(self._data.get, self._read_keys))


_raw_environ: list[Mapping[str, str]] = []


def _os_environ() -> Mapping[str, str]:
    if not _raw_environ:
        data = getattr(os.environ, "_data", None)
        raw = os.name == "posix" and isinstance(data, dict) and type(next(iter(data), b"")) is bytes
        _raw_environ.append(_RawEnviron(data) if raw else os.environ)  # type: ignore[arg-type]
    return _raw_environ[0]


@dataclass(frozen=True)
class EnvironmentProxies:
    """What the environment says: a proxy per target scheme, and the
    ``NO_PROXY`` rules (None: ``*``, nothing is proxied)."""

    https: Proxy | None
    http: Proxy | None
    no_proxy: tuple[_Rule, ...] | None

    def proxy_for(self, scheme: str, host: str, port: int) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.no_proxy is None:
            return None
        if self.no_proxy:
            host = host.lower().rstrip(".")
            try:
                ip: Any = ipaddress.ip_address(host)
            except ValueError:
                ip = None
            for rule in self.no_proxy:
                if rule.matches(scheme, host, ip, port):
                    return None
        return proxy


def _env_value(environ: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """The value of a ``*_PROXY`` variable and the name it came from: the
    lower-case one wins when set, even empty (it then unsets the other), as in
    ``urllib.request.getproxies_environment``; the upper-case HTTP_PROXY is
    ignored under CGI (``REQUEST_METHOD`` set, CVE-2016-1000110, "httpoxy")."""
    lower = _LOWER[name]
    value = environ.get(lower)
    if value is not None:
        return (value or None), lower
    if name == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
        return None, name
    return (environ.get(name) or None), name


def _env_proxy(value: str | None, name: str) -> Proxy | None:
    if value is None:
        return None
    # A bare 'host:port' is an http proxy (urllib, requests and httpx say so).
    url = value if "://" in value else "http://" + value
    return parse_proxy_url(url, f"the environment variable {name}")


def environment_proxies(environ: Mapping[str, str]) -> EnvironmentProxies:
    """Read ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``
    (upper and lower case) from ``environ``; a malformed or unsupported
    proxy URL there raises ValueError naming the variable."""
    if not isinstance(environ, _RawEnviron):
        return _read_environment(environ)
    # The process environment: its raw values are the key, so a request
    # costs one pass over them (this runs for every call).
    snap = environ.snapshot()
    hit = _raw_cache.get(snap)
    if hit is None:
        hit = _read_environment(environ)
        if len(_raw_cache) >= _ENV_CACHE_SIZE:
            _raw_cache.clear()
        _raw_cache[snap] = hit
    return hit


def _read_environment(environ: Mapping[str, str]) -> EnvironmentProxies:
    found = [_env_value(environ, name) for name in _ENV_NAMES]
    key = tuple(v for v, _ in found)
    hit = _env_cache.get(key)
    if hit is not None:
        return hit
    (https, https_name), (http, http_name), (all_, all_name), (no, _) = found
    every = _env_proxy(all_, all_name)
    https_proxy = _env_proxy(https, https_name) or every
    http_proxy = _env_proxy(http, http_name) or every
    result = EnvironmentProxies(https_proxy, http_proxy, parse_no_proxy(no) if no else ())
    if len(_env_cache) >= _ENV_CACHE_SIZE:
        _env_cache.clear()
    _env_cache[key] = result
    return result


_env_cache: dict[tuple[str | None, ...], EnvironmentProxies] = {}
_raw_cache: dict[tuple[bytes | None, ...], EnvironmentProxies] = {}
_ENV_CACHE_SIZE = 16


def _target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a target URL already checked by
    ``request.prepare``; the host lower case and IDNA-encoded, the port its
    default when the URL gives none."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not host.isascii():
        host = idna.encode(host, uts46=True).decode("ascii")
    port = parts.port
    return scheme, host, port if port is not None else DEFAULT_PORTS.get(scheme, 0)


def choose_proxy(
    target_url: str,
    explicit: Any = UNSET,
    client: Any = UNSET,
    configured: str | Proxy | None = None,
    trust_env: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Proxy | None:
    """The proxy for a request to ``target_url``, or None for a direct connection.

    :param target_url: the request's URL (validated already).
    :param explicit: the per-call ``proxy=``: a URL, a :class:`Proxy`, None
        (direct), or :data:`UNSET` (not given).
    :param client: the Client's ``proxy=``, read the same way.
    :param configured: ``configure(proxy=...)``; None means not configured.
    :param trust_env: read the environment when nothing above decided.
    :param environ: the environment (``os.environ`` when None).
    :raises TypeError, ValueError: a proxy URL that is not one (the message
        names its source and never shows the credentials).
    """
    if explicit is not UNSET:
        return None if explicit is None else parse_proxy_url(explicit, "proxy")
    if client is not UNSET:
        return None if client is None else parse_proxy_url(client, "Client(proxy=...)")
    if configured is not None:
        return parse_proxy_url(configured, "configure(proxy=...)")
    if not trust_env:
        return None
    env = environment_proxies(_os_environ() if environ is None else environ)
    if env.https is None and env.http is None:
        return None
    return env.proxy_for(*_target(target_url))


def with_proxy(request: HTTPRequest, proxy: Proxy | None) -> HTTPRequest:
    """``request`` routed through ``proxy`` (None: direct), the proxy's
    credentials added to the values redacted from anything a server echoes."""
    if proxy is None:
        return request if request.proxy is None else _replace(request, proxy=None)
    secrets = request.secrets
    extra = [s for s in proxy.secrets if s not in secrets]
    if extra:
        secrets = tuple(sorted((*secrets, *extra), key=len, reverse=True))
    return _replace(request, proxy=proxy, secrets=secrets)


__all__ = [
    "UNSET",
    "EnvironmentProxies",
    "Proxy",
    "choose_proxy",
    "environment_proxies",
    "parse_no_proxy",
    "parse_proxy_url",
    "with_proxy",
]

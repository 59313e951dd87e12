"""proxy.py without a reactor: parsing, masking, NO_PROXY, precedence."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from nous_twisted import proxy as proxy_module
from nous_twisted.proxy import (
    UNSET,
    EnvironmentProxies,
    Proxy,
    choose_proxy,
    environment_proxies,
    parse_no_proxy,
    parse_proxy_url,
    with_proxy,
)
from nous_twisted.request import prepare

PASSWORD = "s3cret-pa55word"


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Every test parses its URLs and reads its environment itself.

    The module keeps parsed proxy URLs, environment readings, the
    ``os.environ`` reader and its encoded names between calls: a value an
    earlier test left there would skip the code under test (and under
    mutmut, which forks each mutant from a process that already ran the
    tests, a mutated parser or reader would go unseen)."""

    def clear() -> None:
        proxy_module._parsed.clear()
        proxy_module._env_cache.clear()
        proxy_module._raw_cache.clear()
        proxy_module._raw_environ.clear()
        proxy_module._RawEnviron._keys.clear()

    clear()
    yield
    clear()


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "url, scheme, host, port",
    [
        ("http://proxy.example:3128", "http", "proxy.example", 3128),
        ("http://proxy.example", "http", "proxy.example", 80),
        ("https://proxy.example", "https", "proxy.example", 443),
        ("HTTP://Proxy.EXAMPLE:8080/", "http", "proxy.example", 8080),
        ("http://127.0.0.1:1", "http", "127.0.0.1", 1),
        ("http://[::1]:65535", "http", "::1", 65535),
        ("http://[::1]", "http", "::1", 80),
        ("http://bücher.example:3128", "http", "xn--bcher-kva.example", 3128),
    ],
)
def test_parse_address(url: str, scheme: str, host: str, port: int) -> None:
    p = Proxy.from_url(url)
    assert (p.scheme, p.host, p.port, p.authorization) == (scheme, host, port, None)
    assert p.is_https == (scheme == "https")


def test_credentials_become_the_header_value() -> None:
    p = Proxy.from_url(f"http://alice:{PASSWORD}@proxy:3128")
    assert p.authorization == basic("alice", PASSWORD)


def test_credentials_are_percent_decoded_and_utf8() -> None:
    p = Proxy.from_url("http://al%40ice:p%2Fw%3Aé@proxy:3128")
    assert p.authorization == b"Basic " + base64.b64encode("al@ice:p/w:é".encode())


def test_user_without_password() -> None:
    assert Proxy.from_url("http://alice@proxy").authorization == basic("alice", "")


def test_unescaped_at_in_password_is_taken_up_to_the_last_at() -> None:
    assert Proxy.from_url("http://alice:p@ss@proxy").authorization == basic("alice", "p@ss")


def test_repr_and_str_hide_credentials() -> None:
    p = Proxy.from_url(f"http://alice:{PASSWORD}@proxy.example:3128")
    assert repr(p) == "Proxy('http://proxy.example:3128', credentials=<hidden>)"
    assert str(p) == "http://proxy.example:3128"
    assert p.url == "http://proxy.example:3128"
    for text in (repr(p), str(p), f"{p}", repr([p]), repr({"k": p})):
        assert PASSWORD not in text and "alice" not in text
    plain = Proxy.from_url("http://proxy.example:3128")
    assert repr(plain) == "Proxy('http://proxy.example:3128')"


def test_netloc_brackets_ipv6() -> None:
    assert Proxy.from_url("https://[::1]:8443").netloc == "[::1]:8443"
    assert Proxy.from_url("https://[::1]:8443").url == "https://[::1]:8443"
    assert Proxy.from_url("http://h:1").netloc == "h:1"


def test_equality_includes_credentials() -> None:
    a = Proxy.from_url("http://u:one@proxy:1")
    assert a == Proxy.from_url("http://u:one@proxy:1")
    assert hash(a) == hash(Proxy.from_url("http://u:one@proxy:1"))
    assert a != Proxy.from_url("http://u:two@proxy:1")
    assert a != Proxy.from_url("http://proxy:1")
    assert Proxy.from_url("http://proxy:1") != Proxy.from_url("https://proxy:1")


def test_pickle_and_copy() -> None:
    p = Proxy.from_url(f"http://u:{PASSWORD}@proxy:1")
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.copy(p) == p
    assert pickle.loads(pickle.dumps(UNSET)) is UNSET
    assert repr(UNSET) == "UNSET"


def test_a_proxy_passes_through() -> None:
    p = Proxy("http", "h", 1)
    assert parse_proxy_url(p) is p
    assert Proxy.from_url(p) is p


def test_parse_cache_returns_equal_values_per_source() -> None:
    a = parse_proxy_url("http://cache.example:1", "one")
    assert parse_proxy_url("http://cache.example:1", "one") is a
    assert parse_proxy_url("http://cache.example:1", "two") == a


def test_parse_cache_is_bounded() -> None:
    from nous_twisted import proxy as mod

    for i in range(mod._PARSED_CACHE_SIZE + 5):
        parse_proxy_url(f"http://h{i}.example:1")
    assert len(mod._parsed) <= mod._PARSED_CACHE_SIZE


def test_secrets() -> None:
    p = Proxy.from_url(f"http://alice:{PASSWORD}@proxy:1")
    token = p.authorization.partition(b" ")[2]  # type: ignore[union-attr]
    assert p.secrets == (p.authorization, token, PASSWORD.encode())
    short = Proxy.from_url("http://alice:short@proxy:1")
    assert PASSWORD.encode() not in short.secrets
    assert short.secrets == (short.authorization, short.authorization.partition(b" ")[2])  # type: ignore[union-attr]
    assert b"short" not in short.secrets
    eight = Proxy.from_url("http://a:12345678@proxy:1")
    assert b"12345678" in eight.secrets
    seven = Proxy.from_url("http://a:1234567@proxy:1")
    assert b"1234567" not in seven.secrets
    assert Proxy.from_url("http://proxy:1").secrets == ()


@pytest.mark.parametrize("value", [3128, b"http://proxy", ["http://proxy"], object()])
def test_type_errors(value: object) -> None:
    with pytest.raises(TypeError, match=r"^where must be a proxy URL such as .*, not "):
        parse_proxy_url(value, "where")


@pytest.mark.parametrize(
    "url, problem",
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("http://pro xy:1", "whitespace or control"),
        ("http://proxy:1\n", "whitespace or control"),
        ("http://proxy\x7f:1", "whitespace or control"),
        ("http://proxy\x01:1", "whitespace or control"),
        ("proxy.example:3128", "has no scheme"),
        ("socks5://proxy:1080", "scheme 'socks5' is not supported"),
        ("ftp://proxy", "scheme 'ftp' is not supported"),
        ("http://proxy:1/path", "remove the path"),
        ("http://proxy:1?x=1", "remove the path"),
        ("http://proxy:1?", "remove the path"),
        ("http://proxy:1#frag", "remove the path"),
        ("http://proxy:1#", "remove the path"),
        ("http://[::1", "does not parse"),
        ("http://a]b:1", "does not parse"),
        ("http://[::1]x:1", "only ':port' may follow"),
        ("http://[v1.abc]:1", "not a valid IPv6"),
        ("http://::1:3128", "in brackets"),
        ("http://:3128", "has no host"),
        ("http://", "has no host"),
        ("http://proxy:", "not a number in 1-65535"),
        ("http://proxy:0", "not a number in 1-65535"),
        ("http://proxy:65536", "not a number in 1-65535"),
        ("http://proxy:123456", "not a number in 1-65535"),
        ("http://proxy:-1", "not a number in 1-65535"),
        ("http://proxy:x1", "not a number in 1-65535"),
        ("http://[::1]:x", "not a number in 1-65535"),
        ("http://bad_host!:1", "not a valid host name"),
        ("http://-bad.example:1", "not a valid host name"),
    ],
)
def test_value_errors(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^where = ") as e:
        parse_proxy_url(url, "where")
    assert problem in str(e.value)


@pytest.mark.parametrize(
    "url",
    [
        f"http://alice:{PASSWORD}@proxy:bad",
        f"http://alice:{PASSWORD}@proxy:1/path",
        f"socks5://alice:{PASSWORD}@proxy:1",
        f"http://alice:{PASSWORD}@bad_host!:1",
        f"http://alice:{PASSWORD}@[::1",
        f"http://alice:{PASSWORD}@:1",
        f"http://alice:{PASSWORD} @proxy:1",
    ],
)
def test_messages_never_show_credentials(url: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_proxy_url(url)
    assert PASSWORD not in str(e.value) and "alice" not in str(e.value)


def test_a_slash_in_the_password_is_explained_without_showing_it() -> None:
    with pytest.raises(ValueError) as e:
        parse_proxy_url("http://alice:pa/sswordXYZ@proxy:1")
    assert "percent-encode it" in str(e.value)
    assert "sswordXYZ" not in str(e.value) and "alice" not in str(e.value)
    with pytest.raises(ValueError) as e2:
        parse_proxy_url("http://alice:paXYZ@proxy:x")
    assert "percent-encode it" in str(e2.value)
    with pytest.raises(ValueError) as e3:
        parse_proxy_url("http://proxy:x")
    assert "percent-encode" not in str(e3.value)
    with pytest.raises(ValueError) as e4:
        parse_proxy_url("http://proxy/x")
    assert "percent-encode" not in str(e4.value)


# ---------------------------------------------------------------- NO_PROXY


def no_proxy_says(no_proxy: str, url: str) -> bool:
    """True when NO_PROXY sends ``url`` direct."""
    env = {"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1", "NO_PROXY": no_proxy}
    return choose_proxy(url, environ=env) is None


@pytest.mark.parametrize(
    "no_proxy, url, direct",
    [
        ("*", "https://anything.example/", True),
        ("a.example, *", "https://anything.example/", True),
        ("example.com", "https://example.com/", True),
        ("example.com", "https://api.example.com/", True),
        ("example.com", "https://a.b.example.com/", True),
        ("example.com", "https://notexample.com/", False),
        ("example.com", "https://example.com.evil/", False),
        ("EXAMPLE.com", "https://Example.COM/", True),
        (".example.com", "https://api.example.com/", True),
        (".example.com", "https://example.com/", False),
        ("*.example.com", "https://api.example.com/", True),
        ("*.example.com", "https://example.com/", False),
        ("*example.com", "https://example.com/", True),
        ("*example.com", "https://api.example.com/", True),
        ("*example.com", "https://badexample.com/", False),
        ("localhost", "http://localhost:8080/", True),
        ("localhost", "http://127.0.0.1:8080/", False),
        ("127.0.0.1", "http://127.0.0.1:8080/", True),
        ("127.0.0.1", "http://127.0.0.2:8080/", False),
        ("127.0.0.1", "http://localhost/", False),
        ("::1", "http://[::1]:8080/", True),
        ("[::1]", "http://[::1]:8080/", True),
        ("::1", "http://[::2]:8080/", False),
        ("10.0.0.0/8", "https://10.1.2.3/", True),
        ("10.0.0.0/8", "https://11.1.2.3/", False),
        ("10.0.0.0/8", "https://ten.example/", False),
        ("10.0.0.1/8", "https://10.200.0.1/", True),
        ("fd00::/8", "https://[fd12::1]/", True),
        ("fd00::/8", "https://[fe80::1]/", False),
        ("::/0", "https://10.0.0.1/", False),
        ("0.0.0.0/0", "https://[::1]/", False),
        ("0.0.0.0/0", "https://[::ffff:1.2.3.4]/", False),
        ("example.com:8443", "https://example.com:8443/", True),
        ("example.com:8443", "https://example.com/", False),
        ("example.com:443", "https://example.com/", True),
        ("example.com:80", "http://example.com/", True),
        ("example.com:80", "https://example.com/", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/", True),
        ("127.0.0.1:8080", "http://127.0.0.1:9090/", False),
        ("[::1]:8080", "http://[::1]:8080/", True),
        ("[::1]:8080", "http://[::1]:9090/", False),
        ("10.0.0.0/8:443", "https://10.0.0.1/", True),
        ("10.0.0.0/8:443", "http://10.0.0.1/", False),
        ("http://example.com", "http://example.com/", True),
        ("http://example.com", "https://example.com/", False),
        ("https://example.com/", "https://api.example.com/", True),
        ("http://example.com:8080", "http://example.com:8080/", True),
        ("http://", "http://example.com/", False),
        ("", "https://example.com/", False),
        (" , ,", "https://example.com/", False),
        (" example.com ,other.example", "https://other.example/", True),
        ("example.com", "https://example.com./", True),
        ("example.com", "https://bücher.example.com/", True),
        ("xn--bcher-kva.example", "https://bücher.example/", True),
        (".", "https://example.com/", False),
        ("*.", "https://example.com/", False),
        ("*", "https://[::1]/", True),
        ("**", "https://example.com/", False),
        ("[::1", "http://[::1]/", False),
        ("[::1]x", "http://[::1]/", False),
        ("example.com:http", "http://example.com/", False),
        ("example.com:", "http://example.com/", True),
    ],
)
def test_no_proxy(no_proxy: str, url: str, direct: bool) -> None:
    assert no_proxy_says(no_proxy, url) is direct


def test_parse_no_proxy_shapes() -> None:
    assert parse_no_proxy("*") is None
    assert parse_no_proxy("") == ()
    rules = parse_no_proxy("a.example, .b.example, 10.0.0.0/8, ::1, c.example:81, https://d.example")
    assert rules is not None
    assert [r.kind for r in rules] == ["host", "sub", "net", "ip", "host", "host"]
    assert rules[4].port == 81 and rules[4].value == "c.example"
    assert rules[5].scheme == "https" and rules[5].value == "d.example"


# ---------------------------------------------------------------- environment


def test_environment_lower_case_wins() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1"}
    assert choose_proxy("https://t/", environ=env) == Proxy("http", "lower", 1)


def test_environment_empty_lower_case_unsets_upper_case() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": ""}
    assert choose_proxy("https://t/", environ=env) is None


def test_environment_upper_case_alone() -> None:
    assert choose_proxy("https://t/", environ={"HTTPS_PROXY": "http://upper:1"}) == Proxy("http", "upper", 1)


def test_environment_empty_upper_case_is_unset() -> None:
    assert choose_proxy("https://t/", environ={"HTTPS_PROXY": ""}) is None


def test_environment_scheme_picks_the_variable() -> None:
    env = {"HTTPS_PROXY": "http://for-https:1", "HTTP_PROXY": "http://for-http:1"}
    assert choose_proxy("https://t/", environ=env) == Proxy("http", "for-https", 1)
    assert choose_proxy("http://t/", environ=env) == Proxy("http", "for-http", 1)
    assert choose_proxy("http://t/", environ={"HTTPS_PROXY": "http://x:1"}) is None
    assert choose_proxy("https://t/", environ={"HTTP_PROXY": "http://x:1"}) is None


def test_environment_all_proxy_is_the_fallback() -> None:
    env = {"ALL_PROXY": "http://all:1", "HTTP_PROXY": "http://for-http:1"}
    assert choose_proxy("https://t/", environ=env) == Proxy("http", "all", 1)
    assert choose_proxy("http://t/", environ=env) == Proxy("http", "for-http", 1)
    assert choose_proxy("http://t/", environ={"all_proxy": "http://all:1"}) == Proxy("http", "all", 1)


def test_environment_cgi_ignores_upper_case_http_proxy() -> None:
    env = {"HTTP_PROXY": "http://injected:1", "REQUEST_METHOD": "GET"}
    assert choose_proxy("http://t/", environ=env) is None
    env["http_proxy"] = "http://mine:1"
    assert choose_proxy("http://t/", environ=env) == Proxy("http", "mine", 1)
    # only HTTP_PROXY is the header an attacker controls
    env2 = {"HTTPS_PROXY": "http://ok:1", "REQUEST_METHOD": "GET"}
    assert choose_proxy("https://t/", environ=env2) == Proxy("http", "ok", 1)


def test_environment_bare_host_port_is_http() -> None:
    assert choose_proxy("https://t/", environ={"HTTPS_PROXY": "proxy:3128"}) == Proxy("http", "proxy", 3128)
    assert choose_proxy("https://t/", environ={"HTTPS_PROXY": "https://proxy"}) == Proxy("https", "proxy", 443)


def test_environment_credentials() -> None:
    p = choose_proxy("https://t/", environ={"HTTPS_PROXY": f"alice:{PASSWORD}@proxy:3128"})
    assert p is not None and p.authorization == basic("alice", PASSWORD)


def test_environment_bad_value_names_the_variable_without_the_password() -> None:
    with pytest.raises(ValueError) as e:
        choose_proxy("https://t/", environ={"https_proxy": f"socks5://alice:{PASSWORD}@proxy:1080"})
    assert str(e.value).startswith("the environment variable https_proxy = ")
    assert PASSWORD not in str(e.value)
    with pytest.raises(ValueError, match="^the environment variable ALL_PROXY = "):
        choose_proxy("https://t/", environ={"ALL_PROXY": "http://proxy:bad"})


def test_environment_no_proxy_lower_case_wins() -> None:
    env = {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.example", "no_proxy": "t.example"}
    assert choose_proxy("https://t.example/", environ=env) is None
    assert choose_proxy("https://other.example/", environ=env) == Proxy("http", "p", 1)


def test_loopback_is_proxied_unless_named() -> None:
    env = {"HTTP_PROXY": "http://p:1"}
    for url in ("http://127.0.0.1:8080/", "http://localhost/", "http://[::1]/"):
        assert choose_proxy(url, environ=env) == Proxy("http", "p", 1)


def test_environment_proxies_value() -> None:
    env = environment_proxies({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"})
    assert env == EnvironmentProxies(Proxy("http", "p", 1), None, None)
    assert env.proxy_for("https", "t", 443) is None
    none = environment_proxies({})
    assert none == EnvironmentProxies(None, None, ())
    assert none.proxy_for("https", "t", 443) is None


def test_environment_cache_follows_the_values() -> None:
    a = environment_proxies({"HTTPS_PROXY": "http://p:1"})
    assert environment_proxies({"HTTPS_PROXY": "http://p:1"}) is a
    b = environment_proxies({"HTTPS_PROXY": "http://q:1"})
    assert b.https == Proxy("http", "q", 1)


def test_environment_cache_is_bounded() -> None:
    from nous_twisted import proxy as mod

    for i in range(mod._ENV_CACHE_SIZE + 3):
        environment_proxies({"HTTPS_PROXY": f"http://p{i}:1"})
    assert len(mod._env_cache) <= mod._ENV_CACHE_SIZE


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://from-os:1")
    assert choose_proxy("https://t/") == Proxy("http", "from-os", 1)
    monkeypatch.setenv("no_proxy", "t")
    assert choose_proxy("https://t/") is None


# ---------------------------------------------------------------- precedence

ENV = {"HTTPS_PROXY": "http://env:1", "HTTP_PROXY": "http://env:1"}
E = Proxy("http", "env", 1)
X = Proxy("http", "explicit", 1)
C = Proxy("http", "client", 1)
G = Proxy("http", "configured", 1)


def test_precedence_explicit_wins() -> None:
    assert choose_proxy("https://t/", "http://explicit:1", "http://client:1", "http://configured:1", True, ENV) == X
    assert choose_proxy("https://t/", X, C, G, environ=ENV) is X


def test_precedence_explicit_none_is_direct() -> None:
    assert choose_proxy("https://t/", None, C, G, True, ENV) is None


def test_precedence_client_next() -> None:
    assert choose_proxy("https://t/", UNSET, "http://client:1", G, True, ENV) == C
    assert choose_proxy("https://t/", client=None, configured=G, environ=ENV) is None


def test_precedence_configured_next() -> None:
    assert choose_proxy("https://t/", configured="http://configured:1", environ=ENV) == G
    assert choose_proxy("https://t/", configured=None, environ=ENV) == E


def test_precedence_trust_env() -> None:
    assert choose_proxy("https://t/", environ=ENV) == E
    assert choose_proxy("https://t/", trust_env=False, environ=ENV) is None
    assert choose_proxy("https://t/", configured=G, trust_env=False, environ=ENV) == G


def test_no_proxy_does_not_apply_to_proxies_set_in_code() -> None:
    env = {**ENV, "NO_PROXY": "*"}
    assert choose_proxy("https://t/", X, environ=env) is X
    assert choose_proxy("https://t/", client=C, environ=env) is C
    assert choose_proxy("https://t/", configured=G, environ=env) is G
    assert choose_proxy("https://t/", environ=env) is None


def test_sources_in_messages() -> None:
    with pytest.raises(ValueError, match=r"^proxy = "):
        choose_proxy("https://t/", "http://p:x")
    with pytest.raises(ValueError, match=r"^Client\(proxy=\.\.\.\) = "):
        choose_proxy("https://t/", client="http://p:x")
    with pytest.raises(ValueError, match=r"^configure\(proxy=\.\.\.\) = "):
        choose_proxy("https://t/", configured="http://p:x")
    with pytest.raises(TypeError, match=r"^proxy must be"):
        choose_proxy("https://t/", 3128)


# ---------------------------------------------------------------- with_proxy


def test_with_proxy_routes_and_redacts() -> None:
    req = prepare("https://api.example/v1", {}, {"Authorization": "Bearer sk-0123456789"})
    p = Proxy.from_url(f"http://alice:{PASSWORD}@proxy:1")
    routed = with_proxy(req, p)
    assert routed.proxy is p
    for s in p.secrets:
        assert s in routed.secrets
    for s in req.secrets:
        assert s in routed.secrets
    assert list(routed.secrets) == sorted(routed.secrets, key=len, reverse=True)
    assert PASSWORD not in repr(routed)
    assert with_proxy(routed, None).proxy is None
    assert with_proxy(req, None) is req
    plain = Proxy.from_url("http://proxy:1")
    assert with_proxy(req, plain).secrets == req.secrets
    assert with_proxy(with_proxy(req, p), p).secrets == routed.secrets


# Whole messages, so that a changed word is seen.
EXACT = [
    ('', "S = '': the proxy URL is empty; give one such as 'http://proxy.example:3128', or None"),
    ('http://a b:1', "S = 'http://a b:1': the proxy URL contains whitespace or control characters"),
    ('proxy:1', "S = 'proxy:1': the proxy URL has no scheme; write it as 'http://host:port' (or 'https://host:port')"),
    ('socks5://h', "S = 'socks5://h': proxy scheme 'socks5' is not supported; use an 'http://' proxy (or 'https://' for TLS to the proxy)"),
    ('http://h/x', "S = 'http://h/x': a proxy URL is scheme://host:port only; remove the path, query or fragment"),
    ('http://u:p@h/x', "S = 'http://h/x': a proxy URL is scheme://host:port only; remove the path, query or fragment (if the password holds '/', '?', '#' or '@', percent-encode it: '%2F', '%3F', '%23', '%40')"),
    ('http://[::1', "S = 'http://[::1': the proxy URL does not parse (check the brackets around an IPv6 address)"),
    ('http://[v1.a]:1', "S = 'http://[v1.a]:1': the proxy host is not a valid IPv6 address"),
    ('http://[::1]x:1', "S = 'http://[::1]x:1': only ':port' may follow the IPv6 address of the proxy"),
    ('http://::1:1', "S = 'http://::1:1': write an IPv6 proxy address in brackets, as in 'http://[::1]:3128'"),
    ('http://:1', "S = 'http://:1': the proxy URL has no host"),
    ('http://h:0', "S = 'http://h:0': the proxy port is not a number in 1-65535"),
    ('http://u:p@h:x', "S = 'http://h:x': the proxy port is not a number in 1-65535 (if the password holds '/', '?', '#' or '@', percent-encode it: '%2F', '%3F', '%23', '%40')"),
    ('http://bad_host!:1', "S = 'http://bad_host!:1': the proxy host is not a valid host name"),
]


@pytest.mark.parametrize("url, message", EXACT)
def test_exact_messages(url: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_proxy_url(url, "S")
    assert str(e.value) == message


def test_exact_type_message() -> None:
    with pytest.raises(TypeError) as e:
        parse_proxy_url(3128, "S")
    assert str(e.value) == "S must be a proxy URL such as 'http://proxy.example:3128' (or None), not int"


def test_default_source_is_proxy() -> None:
    with pytest.raises(ValueError, match=r"^proxy = ''"):
        parse_proxy_url("")
    with pytest.raises(ValueError, match=r"^proxy = ''"):
        Proxy.from_url("")


def test_proxy_for_normalises_the_host() -> None:
    env = environment_proxies({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"})
    assert env.proxy_for("https", "API.Example.COM.", 443) is None
    assert env.proxy_for("https", "other.example", 443) == Proxy("http", "p", 1)
    assert env.proxy_for("http", "other.example", 80) is None  # no http proxy in it



# ---------------------------------------------------------------- edges the tests above leave open


@pytest.mark.parametrize(
    "no_proxy, url, direct",
    [
        # a scheme given with an address or a range holds for that scheme only
        ("http://127.0.0.1", "http://127.0.0.1/", True),
        ("http://127.0.0.1", "https://127.0.0.1/", False),
        ("https://10.0.0.0/8", "https://10.0.0.1/", True),
        ("https://10.0.0.0/8", "http://10.0.0.1/", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", True),
        ("http://127.0.0.1:8080", "https://127.0.0.1:8080/", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:9090/", False),
        ("https://10.0.0.0/8:443", "https://10.0.0.1/", True),
        ("https://10.0.0.0/8:443", "http://10.0.0.1:443/", False),
        ("https://10.0.0.0/8:443", "https://10.0.0.1:8443/", False),
        # subdomain rules keep their port and scheme
        ("*.example.com:8443", "https://api.example.com:8443/", True),
        ("*.example.com:8443", "https://api.example.com/", False),
        ("https://*.example.com", "https://api.example.com/", True),
        ("https://*.example.com", "http://api.example.com/", False),
        (".example.com:8443", "https://api.example.com:8443/", True),
        (".example.com:8443", "https://api.example.com/", False),
        ("https://.example.com", "https://api.example.com/", True),
        ("https://.example.com", "http://api.example.com/", False),
        ("https://*.example.com:8443", "https://api.example.com:8443/", True),
        ("https://.example.com:8443", "https://api.example.com:8443/", True),
        # one-letter domains
        ("*.a", "https://x.a/", True),
        (".a", "https://x.a/", True),
        ("a", "https://x.a/", True),
        # a target host in another script is compared in its IDNA form
        ("xn--bcher-kva.example", "https://ｂücher.example/", True),
    ],
)
def test_no_proxy_more(no_proxy: str, url: str, direct: bool) -> None:
    assert no_proxy_says(no_proxy, url) is direct


@pytest.mark.parametrize("value", ["*.", ".", "**", "*", "[::1]]:80", "http://a://b", "https://", "[::1", "a:x"])
def test_entries_that_mean_nothing_make_no_rule(value: str) -> None:
    rules = parse_no_proxy("keep.example," + value)
    if value == "*":
        assert rules is None
    else:
        assert rules is not None and [r.value for r in rules] == ["keep.example"]


def test_rule_values() -> None:
    rules = parse_no_proxy("https://*.a.example:8443, http://.b.example, 10.0.0.1/8, [::1]:81, http://127.0.0.1")
    assert rules is not None
    got = [(r.kind, str(r.value), r.port, r.scheme) for r in rules]
    assert got == [
        ("sub", "a.example", 8443, "https"),
        ("sub", "b.example", None, "http"),
        ("net", "10.0.0.0/8", None, None),
        ("ip", "::1", 81, None),
        ("ip", "127.0.0.1", None, "http"),
    ]


def test_cache_limits_are_exact() -> None:
    # a full cache is emptied before the next entry goes in
    for i in range(proxy_module._PARSED_CACHE_SIZE):
        parse_proxy_url(f"http://h{i}.example:1")
    assert len(proxy_module._parsed) == proxy_module._PARSED_CACHE_SIZE
    parse_proxy_url("http://one-more.example:1")
    assert len(proxy_module._parsed) == 1
    for i in range(proxy_module._ENV_CACHE_SIZE):
        environment_proxies({"HTTPS_PROXY": f"http://p{i}:1"})
    assert len(proxy_module._env_cache) == proxy_module._ENV_CACHE_SIZE
    environment_proxies({"HTTPS_PROXY": "http://one-more:1"})
    assert len(proxy_module._env_cache) == 1


def test_exact_environment_messages() -> None:
    # a bare host:port is read as an http:// URL, and the message says which variable
    with pytest.raises(ValueError) as e:
        choose_proxy("https://t/", environ={"HTTPS_PROXY": "proxy:bad"})
    assert str(e.value) == (
        "the environment variable HTTPS_PROXY = 'http://proxy:bad': the proxy port is not a number in 1-65535"
    )
    with pytest.raises(ValueError) as e2:
        choose_proxy("http://t/", environ={"HTTP_PROXY": "http://proxy:bad"})
    assert str(e2.value) == (
        "the environment variable HTTP_PROXY = 'http://proxy:bad': the proxy port is not a number in 1-65535"
    )
    with pytest.raises(ValueError) as e3:
        choose_proxy("http://t/", environ={"http_proxy": "http://proxy:bad"})
    assert str(e3.value).startswith("the environment variable http_proxy = ")


def test_from_url_names_its_source() -> None:
    with pytest.raises(ValueError) as e:
        Proxy.from_url("http://p:x", "S")
    assert str(e.value) == "S = 'http://p:x': the proxy port is not a number in 1-65535"


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://a:1:2", "S = 'http://a:1:2': write an IPv6 proxy address in brackets, as in 'http://[::1]:3128'"),
        ("http://[::1]]:1", "S = 'http://[::1]]:1': only ':port' may follow the IPv6 address of the proxy"),
        ("http://a\x7fb:1", "S = 'http://a\\x7fb:1': the proxy URL contains whitespace or control characters"),
        ("http://a\x1fb:1", "S = 'http://a\\x1fb:1': the proxy URL contains whitespace or control characters"),
    ],
)
def test_more_exact_messages(url: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_proxy_url(url, "S")
    assert str(e.value) == message


# ---------------------------------------------------------------- the os.environ reader


def test_raw_environ_reads_like_os_environ() -> None:
    raw = proxy_module._RawEnviron({b"A": b"1", b"B": b"caf\xc3\xa9", b"C": b"\xff", b"N\xff": b"v", b"E": b""})
    assert raw.get("A") == "1"
    assert raw.get("B") == "café"
    # bytes that are not UTF-8 come back as os.environ gives them: surrogate escapes
    assert raw.get("C") == "\udcff"
    assert raw.get("N\udcff") == "v"
    assert "N\udcff" in raw
    assert raw.get("E") == ""
    assert raw.get("missing") is None
    assert raw.get("missing", "d") == "d"
    assert "A" in raw and "E" in raw
    assert "missing" not in raw
    assert b"A" not in raw and 3 not in raw
    # the name's encoding is kept, and gives the same answer next time
    assert raw.get("A") == "1" and "A" in raw


def test_raw_environ_follows_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.name != "posix":
        pytest.skip("os.environ keeps bytes only on POSIX")
    env = proxy_module._os_environ()
    assert isinstance(env, proxy_module._RawEnviron)
    assert proxy_module._os_environ() is env
    monkeypatch.setenv("NOUS_Q_PROBE", "x\udcffy")
    assert env.get("NOUS_Q_PROBE") == os.environ["NOUS_Q_PROBE"] == "x\udcffy"
    assert "NOUS_Q_PROBE" in env
    monkeypatch.delenv("NOUS_Q_PROBE")
    assert env.get("NOUS_Q_PROBE") is None and "NOUS_Q_PROBE" not in env
    for name, value in os.environ.items():
        assert env.get(name) == value


def test_upper_case_http_proxy_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUEST_METHOD", raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://from-os:1")
    assert choose_proxy("http://t/") == Proxy("http", "from-os", 1)
    # under CGI the upper-case one is a request header: ignored
    monkeypatch.setenv("REQUEST_METHOD", "GET")
    assert choose_proxy("http://t/") is None


class _Environ(dict):  # type: ignore[type-arg]
    """Stands in for os.environ: a mapping with the ``_data`` it may keep."""

    def __init__(self, data: object) -> None:
        super().__init__(X="1")
        if data is not None:
            self._data = data


@pytest.mark.parametrize(
    "name, data, raw",
    [
        ("posix", {b"X": b"1"}, True),
        ("posix", {}, True),  # nothing set yet: still bytes
        ("nt", {b"X": b"1"}, False),
        ("nt", {}, False),
        ("posix", {"X": "1"}, False),  # keys that are not bytes
        ("posix", [(b"X", b"1")], False),  # not a dict
        ("posix", None, False),  # no _data at all
    ],
)
def test_os_environ_reader_choice(monkeypatch: pytest.MonkeyPatch, name: str, data: object, raw: bool) -> None:
    environ = _Environ(data)
    monkeypatch.setattr(proxy_module, "os", SimpleNamespace(name=name, environ=environ, sys=sys))
    got = proxy_module._os_environ()
    if raw:
        assert isinstance(got, proxy_module._RawEnviron)
        assert got._data is data
    else:
        assert got is environ
    assert proxy_module._os_environ() is got


def test_os_environ_proxies_follow_every_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment's result is cached by its raw values: every
    variable read is part of the key, so any change applies to the next call."""
    if os.name != "posix":
        pytest.skip("os.environ keeps bytes only on POSIX")
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    assert choose_proxy("http://t/") is None
    monkeypatch.setenv("HTTP_PROXY", "http://a:1")
    assert choose_proxy("http://t/") == Proxy("http", "a", 1)
    monkeypatch.setenv("REQUEST_METHOD", "GET")  # under CGI the upper-case one is ignored (httpoxy)
    assert choose_proxy("http://t/") is None
    monkeypatch.delenv("REQUEST_METHOD")
    monkeypatch.setenv("http_proxy", "http://b:2")
    assert choose_proxy("http://t/") == Proxy("http", "b", 2)
    monkeypatch.setenv("no_proxy", "t")
    assert choose_proxy("http://t/") is None
    monkeypatch.setenv("NO_PROXY", "u")  # the lower-case one wins
    assert choose_proxy("http://t/") is None
    monkeypatch.delenv("no_proxy")
    assert choose_proxy("http://t/") == Proxy("http", "b", 2)
    monkeypatch.setenv("all_proxy", "http://c:3")
    monkeypatch.setenv("ALL_PROXY", "http://d:4")
    assert choose_proxy("https://t/") == Proxy("http", "c", 3)
    monkeypatch.setenv("https_proxy", "http://e:5")
    monkeypatch.setenv("HTTPS_PROXY", "http://f:6")
    assert choose_proxy("https://t/") == Proxy("http", "e", 5)
    monkeypatch.delenv("https_proxy")
    assert choose_proxy("https://t/") == Proxy("http", "f", 6)
    monkeypatch.delenv("all_proxy")
    monkeypatch.delenv("HTTPS_PROXY")
    assert choose_proxy("https://t/") == Proxy("http", "d", 4)
    assert len(proxy_module._raw_cache) >= 8


def test_os_environ_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.name != "posix":
        pytest.skip("os.environ keeps bytes only on POSIX")
    for i in range(proxy_module._ENV_CACHE_SIZE):
        monkeypatch.setenv("HTTPS_PROXY", f"http://p{i}:1")
        assert choose_proxy("https://t/") == Proxy("http", f"p{i}", 1)
    assert len(proxy_module._raw_cache) == proxy_module._ENV_CACHE_SIZE
    monkeypatch.setenv("HTTPS_PROXY", "http://one-more:1")
    assert choose_proxy("https://t/") == Proxy("http", "one-more", 1)
    assert len(proxy_module._raw_cache) == 1


def test_os_environ_is_read_once_per_set_of_values(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.name != "posix":
        pytest.skip("os.environ keeps bytes only on POSIX")
    calls: list[int] = []
    real = proxy_module._read_environment

    def counting(environ: Any) -> Any:
        calls.append(1)
        return real(environ)

    monkeypatch.setattr(proxy_module, "_read_environment", counting)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    env = proxy_module._os_environ()
    first = environment_proxies(env)
    assert environment_proxies(env) is first
    assert len(calls) == 1
    monkeypatch.setenv("HTTPS_PROXY", "http://x:1")
    assert environment_proxies(env).https == Proxy("http", "x", 1)
    assert len(calls) == 2
    environment_proxies({"HTTPS_PROXY": "http://y:1"})  # any other mapping: read each time
    environment_proxies({"HTTPS_PROXY": "http://y:1"})
    assert len(calls) == 4

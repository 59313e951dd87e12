"""Request preparation, exact values from both sides of each rule: header
encodings (Latin-1 values, ASCII names), the wire form and the displayed
form of URLs, ports at their limits, query secrets, the URL cache.
Reactor-free (these run under ``tox -e mutation``)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from nous_twisted import request as request_module
from nous_twisted.request import (
    USER_AGENT,
    HTTPRequest,
    check_url,
    display_url,
    encode_body,
    normalize_headers,
    prepare,
    request_secrets,
)

URL = "https://api.example/v1"


# -- headers ------------------------------------------------------------------


def test_latin1_values_are_encoded_as_latin1() -> None:
    assert normalize_headers({"X-Name": "José"}) == [(b"X-Name", b"Jos\xe9")]
    assert normalize_headers([("X-A", "\xff\xa0")]) == [(b"X-A", b"\xff\xa0")]


def test_values_outside_latin1_are_refused_with_the_encoding_named() -> None:
    with pytest.raises(ValueError) as e:
        normalize_headers([("X-Ok", "a"), ("X-Euro", "5 \u20ac")])
    assert str(e.value) == (
        "header #1 value has characters outside Latin-1; encode it (values: "
        "percent- or base64-encode) before sending"
    )


def test_names_outside_ascii_are_refused_with_the_encoding_named() -> None:
    with pytest.raises(ValueError) as e:
        normalize_headers({"X-Jos\xe9": "v"})
    assert str(e.value) == (
        "header #0 name has characters outside ASCII; encode it (values: "
        "percent- or base64-encode) before sending"
    )


@pytest.mark.parametrize("item, message", [
    ((1, "v"), "header #0 name must be str, not int"),
    (("X-A", None), "header #0 value must be str, not NoneType"),
    (("X-A", 3.5), "header #0 value must be str, not float"),
])
def test_header_types(item: tuple[Any, Any], message: str) -> None:
    with pytest.raises(TypeError) as e:
        normalize_headers([item])
    assert str(e.value) == message


@pytest.mark.parametrize("item", [("a",), ("a", "b", "c"), ["a", "b"], "ab"])
def test_header_items_must_be_pairs(item: Any) -> None:
    with pytest.raises(TypeError) as e:
        normalize_headers([item])
    assert str(e.value) == f"header #0 must be a (name, value) pair, not {type(item).__name__}"


def test_headers_argument_forms() -> None:
    assert normalize_headers(None) == []
    assert normalize_headers({}) == []
    assert normalize_headers(OrderedDict([("B", "1"), ("A", "2")])) == [(b"B", b"1"), (b"A", b"2")]
    assert normalize_headers(iter([(b"X", b"y")])) == [(b"X", b"y")]
    for bad in ("X: y", b"X: y"):
        with pytest.raises(TypeError) as e:
            normalize_headers(bad)
        assert str(e.value) == "headers must be a mapping or an iterable of (name, value) pairs, not a string"
    with pytest.raises(TypeError) as e:
        normalize_headers(5)
    assert str(e.value) == "headers must be a mapping or an iterable of (name, value) pairs, not int"


def test_header_name_and_value_rules_at_their_edges() -> None:
    assert normalize_headers({"!#$%&'*+-.^_`|~09AZaz": "v"}) == [(b"!#$%&'*+-.^_`|~09AZaz", b"v")]
    for name in ("X A", "X:A", "", "X\"", "X(A)"):
        with pytest.raises(ValueError, match="is not a valid HTTP field name"):
            normalize_headers({name: "v"})
    with pytest.raises(ValueError) as e:
        normalize_headers({"a" * 50 + " ": "v"})
    assert str(e.value) == f"header name {'a' * 40!r} is not a valid HTTP field name (letters, digits and !#$%&'*+-.^_`|~ only)"
    assert normalize_headers({"X": "\x20\x21~\x80\t"}) == [(b"X", b"!~\x80")]
    for bad in ("\x00", "\x08", "\n", "\x1f", "\x7f"):
        with pytest.raises(ValueError) as e2:
            normalize_headers({"X-K": "a" + bad})
        assert str(e2.value) == (
            "the value of header 'X-K' contains a control character (CR, LF or NUL, or another byte below 0x20 "
            "other than tab, or DEL); value redacted; header injection is refused"
        )


def test_refused_header_message_is_exact() -> None:
    with pytest.raises(ValueError) as e:
        normalize_headers({"HOST": "x"})
    assert str(e.value) == "header 'HOST' is refused: it is derived from the URL; put the host in the URL; remove it"


def test_value_padding_is_stripped_but_inner_spaces_kept() -> None:
    assert normalize_headers({"X": " \ta b\t "}) == [(b"X", b"a b")]


def test_prepare_headers_exact() -> None:
    req = prepare(URL, {"a": 1}, {"content-TYPE": "text/x", "Accept-Encoding": "br"}, accept=b"text/event-stream")
    assert req.headers == (
        (b"content-TYPE", b"text/x"),
        (b"accept", b"text/event-stream"),
        (b"user-agent", USER_AGENT),
        (b"accept-encoding", b"gzip, deflate"),
    )
    req = prepare(URL, b"{}", [("ACCEPT", "x/y")], accept=b"text/event-stream")
    assert req.headers == (
        (b"ACCEPT", b"x/y"),
        (b"content-type", b"application/json"),
        (b"user-agent", USER_AGENT),
        (b"accept-encoding", b"gzip, deflate"),
    )
    assert prepare(URL, b"", None).headers == (
        (b"content-type", b"application/json"),
        (b"user-agent", USER_AGENT),
        (b"accept-encoding", b"gzip, deflate"),
    )
    # the caller's User-Agent, in any case, replaces ours
    assert prepare(URL, b"", {"USER-agent": "mine/2"}).headers[0] == (b"USER-agent", b"mine/2")
    assert sum(n.lower() == b"user-agent" for n, _ in prepare(URL, b"", {"USER-agent": "m"}).headers) == 1
    # a client's defaults apply unless the call names them
    defaults = [(b"Authorization", b"Bearer a"), (b"X-Team", b"t")]
    req = prepare(URL, b"", {"authorization": "Bearer b"}, defaults=defaults)
    assert req.headers[:2] == ((b"X-Team", b"t"), (b"authorization", b"Bearer b"))
    assert prepare(URL, b"", None, defaults=defaults).headers[:2] == tuple(defaults)
    assert prepare(URL, b"", None, pool_timeout=2.5).pool_timeout == 2.5


def test_twisted_headers_keep_every_value() -> None:
    req = prepare(URL, {}, [("X-A", "1"), ("x-a", "2")])
    h = req.twisted_headers()
    assert h.getRawHeaders(b"x-a") == [b"1", b"2"]
    assert h.getRawHeaders(b"content-type") == [b"application/json"]


# -- body ---------------------------------------------------------------------


def test_body_forms() -> None:
    assert encode_body(b"raw") == b"raw"
    assert encode_body(bytearray(b"ba")) == b"ba"
    assert type(encode_body(bytearray(b"ba"))) is bytes
    assert encode_body(memoryview(b"mv")) == b"mv"
    assert encode_body({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert encode_body([1, 2]) == b"[1,2]"
    assert encode_body(OrderedDict(b=1)) == b'{"b":1}'


@pytest.mark.parametrize("body, message", [
    ("{}", "body must be a Mapping, a list or bytes, not str (encode it to bytes yourself, or pass the parsed dict)"),
    ((1, 2), "body must be a Mapping, a list or bytes, not tuple"),
    (None, "body must be a Mapping, a list or bytes, not NoneType"),
])
def test_body_types(body: Any, message: str) -> None:
    with pytest.raises(TypeError) as e:
        encode_body(body)
    assert str(e.value) == message


def test_unencodable_body() -> None:
    with pytest.raises(TypeError) as e:
        encode_body({"a": object()})
    assert str(e.value).startswith("body cannot be encoded as JSON: ")
    assert e.value.__cause__ is None and e.value.__suppress_context__


# -- URLs: the wire form ------------------------------------------------------


@pytest.mark.parametrize("url, wire", [
    ("https://api.example", b"https://api.example"),
    ("HTTPS://api.example/v1", b"https://api.example/v1"),
    ("http://api.example:8080/v1", b"http://api.example:8080/v1"),
    ("http://api.example:1/", b"http://api.example:1/"),
    ("http://api.example:65535/", b"http://api.example:65535/"),
    ("http://api.example?x=1", b"http://api.example/?x=1"),
    ("http://api.example#f", b"http://api.example/#f"),
    ("http://[::1]/x", b"http://[::1]/x"),
    ("http://[::1]:81/x", b"http://[::1]:81/x"),
    ("http://b\u00fccher.example/", b"http://xn--bcher-kva.example/"),
    ("http://h.example/caf\u00e9?q=\u00e9#\u00e9", b"http://h.example/caf%C3%A9?q=%C3%A9#%C3%A9"),
    ("http://h.example/a%20b?c=d&e", b"http://h.example/a%20b?c=d&e"),
    ("http://h.example/\u00e9 ", None),
])
def test_wire_form(url: str, wire: bytes | None) -> None:
    if wire is None:
        with pytest.raises(ValueError):
            check_url(url)
    else:
        assert check_url(url) == wire
        assert prepare(url, {}, {}).url_bytes == wire


def test_treq_url_sends_the_wire_bytes() -> None:
    req = prepare("http://[::1]:81/caf\u00e9?q=1", {}, {})
    u = req.treq_url()
    assert u.to_uri() is u
    assert u.to_text() == "http://[::1]:81/caf%C3%A9?q=1"


# -- URLs: ports, hosts, authority --------------------------------------------


@pytest.mark.parametrize("port, message", [
    ("0", "url 'http://h.example:0/' has port 0, outside 1-65535"),
    ("65536", "url 'http://h.example:65536/' has port 65536, outside 1-65535"),
    ("", "url 'http://h.example:/' has an empty port after ':'; remove the ':' or give the port"),
    ("8x", "url 'http://h.example:8x/' has a port that is not a number; give one in 1-65535"),
    ("-1", "url 'http://h.example:-1/' has a port that is not a number; give one in 1-65535"),
])
def test_port_limits(port: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        check_url(f"http://h.example:{port}/")
    assert str(e.value) == message


def test_port_hint_when_an_at_sign_suggests_credentials() -> None:
    with pytest.raises(ValueError) as e:
        check_url("http://user:pa/ss@h.example/x")
    assert str(e.value) == (
        "url 'http://h.example/x' has a port that is not a number; give one in 1-65535 "
        "(if what precedes '@' is user:password, put the credentials in a header instead)"
    )
    with pytest.raises(ValueError) as e:
        check_url("http://h.example:x/?a=@")
    assert str(e.value) == "url 'http://h.example:x/?...' has a port that is not a number; give one in 1-65535"


@pytest.mark.parametrize("url, message", [
    ("http://[::1/x", "url 'http://[::1/x' has an unclosed '[' in its host"),
    ("http://[::1]x/", "url 'http://[::1]x/' has text after the IPv6 address; only ':port' may follow ']'"),
    ("http://[::1]:/", "url 'http://[::1]:/' has an empty port after ':'; remove the ':' or give the port"),
    ("http://a:1:2/", "url 'http://a:1:2/' has more than one ':' in its host part; write an IPv6 address in "
     "brackets, as in http://[::1]:8080/"),
    ("http://[fe80::1%25eth0]/", "url 'http://[fe80::1%25eth0]/': IPv6 zone identifiers ('%...') are not supported"),
    ("http://[::g]/", "url 'http://[::g]/': [::g] is not a valid IPv6 address"),
    ("http://[]/", "url 'http://[]/' has no host"),
    ("http://:80/", "url 'http://:80/' has no host"),
    ("http://a\\b/", "url 'http://a\\\\b/' has a backslash in its host part; use '/' to start the path"),
    ("ftp://h/", "url 'ftp://h/' has scheme 'ftp'; only 'http' and 'https' are supported"),
    ("https:/h/", "url 'https:/h/' is malformed: write 'https://' (or 'http://') then the host"),
    ("h.example/x", "url 'h.example/x' has no scheme; start it with https:// (or http:// for a plain-HTTP server)"),
    ("http://h\ud800/", "url 'http://h\\ud800/' contains a lone surrogate, which has no UTF-8 form"),
])
def test_authority_messages(url: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        check_url(url)
    assert str(e.value) == message


def test_host_name_message() -> None:
    with pytest.raises(ValueError) as e:
        check_url("http://-bad.example/x?k=SECRETSECRET")
    text = str(e.value)
    assert text.startswith("url 'http://-bad.example/x?...': host '-bad.example' is not a valid host name (")
    assert text.endswith(
        "); host names are letters, digits and inner hyphens, in dot-separated labels of up to 63 characters"
    )
    long_host = "a" * 100 + ".example"
    with pytest.raises(ValueError) as e:
        check_url(f"http://{long_host}/")
    assert f"host {long_host[:80]!r} is not" in str(e.value)


@pytest.mark.parametrize("host", ["a" * 63 + ".example", "x.example.", "a-b.example", "1.2.3.4", "localhost"])
def test_good_hosts(host: str) -> None:
    assert check_url(f"http://{host}/") == f"http://{host}/".encode()


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..b", "a-.example", "\u00e9-.example"])
def test_bad_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="is not a valid host name"):
        check_url(f"http://{host}/")


def test_url_type() -> None:
    with pytest.raises(TypeError) as e:
        check_url(b"http://h/")
    assert str(e.value) == "url must be a str such as 'https://api.openai.com/v1/chat/completions', not bytes"

    class S(str):
        pass

    req = prepare(S("http://h.example/"), {}, {})
    assert type(req.url) is str and req.url == "http://h.example/"


# -- URLs: what messages show -------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("https://api.example/v1/x?key=abc#f", "https://api.example/v1/x?..."),
    ("https://api.example/v1/x#f?key=abc", "https://api.example/v1/x"),
    ("https://API.example:443/v1", "https://API.example:443/v1"),
    ("HTTP://h.example", "http://h.example"),
    ("http://[::1]:8080/x?", "http://[::1]:8080/x?..."),
    ("http://b\u00fccher.example/\u00e9", "http://b\u00fccher.example/\u00e9"),
    # not valid URLs: shown without query, fragment or user info
    ("https://u:p@h.example/x?y", "https://h.example/x?..."),
    ("https://u:p/s@s@h.example/x?y=1", "https://h.example/x?..."),
    ("nonsense ?key=1", "nonsense ?..."),
    ("nonsense #key=1", "nonsense "),
    ("u:p@host", "host"),
    ("ftp://u@h/" + "a" * 300, "ftp://h/" + "a" * 192 + "..."),
])
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_display_url_reaches_the_request_and_its_repr() -> None:
    req = prepare("https://api.example/v1/m?key=SECRETSECRET", {"a": 1}, {"X-K": "v"})
    assert req.display_url == "https://api.example/v1/m?..."
    assert repr(req) == (
        "HTTPRequest(POST https://api.example/v1/m?..., 7 bytes, headers=[X-K: <redacted>, "
        f"content-type: application/json, user-agent: {USER_AGENT.decode()}, accept-encoding: gzip, deflate])"
    )


def test_shown_is_at_most_200_characters_plus_an_ellipsis() -> None:
    with pytest.raises(ValueError) as e:
        check_url("http://h.example/" + "x" * 182 + " ")  # 200 characters
    assert str(e.value).startswith("url 'http://h.example/" + "x" * 182 + " ' contains")
    with pytest.raises(ValueError) as e:
        check_url("http://h.example/" + "x" * 183 + " ")
    assert str(e.value).startswith("url 'http://h.example/" + "x" * 183 + "...' contains")


# -- secrets ------------------------------------------------------------------


def test_query_secrets_exact() -> None:
    req = prepare("https://h.example/v?key=AIza%2BKEY12&k2=a+b+c+d+e&short=1234567&eight=12345678#frag=ABCDEFGHIJ",
                  {}, {})
    # (equal lengths come in no particular order)
    assert sorted(req.secrets) == sorted([b"AIza%2BKEY12", b"a+b+c+d+e", b"a b c d e", b"AIza+KEY12", b"12345678"])
    assert [len(s) for s in req.secrets] == sorted((len(s) for s in req.secrets), reverse=True)
    assert b"ABCDEFGHIJ" not in req.secrets
    assert b"frag=ABCDEFGHIJ" not in req.secrets


def test_query_secret_value_is_what_follows_the_first_equals() -> None:
    req = prepare("https://h.example/?k=abc=defghij", {}, {})
    assert req.secrets == (b"abc=defghij",)
    assert prepare("https://h.example/#?k=abcdefghij", {}, {}).secrets == ()
    assert prepare("https://h.example/?k=\u00e9\u00e9\u00e9\u00e9", {}, {}).secrets == (
        "\u00e9\u00e9\u00e9\u00e9".encode(),)


def test_request_secrets_exact() -> None:
    assert request_secrets([(b"Authorization", b"Bearer sk-12345678")]) == (b"Bearer sk-12345678", b"sk-12345678")
    assert request_secrets([(b"PROXY-AUTHORIZATION", b"Basic \t12345678 ")]) == (b"Basic \t12345678 ", b"12345678")
    assert request_secrets([(b"Authorization", b"Bearer 1234567")]) == (b"Bearer 1234567",)
    assert request_secrets([(b"X-Key", b"12345678")]) == (b"12345678",)
    assert request_secrets([(b"X-Key", b"1234567")]) == ()
    assert request_secrets([(b"User-Agent", b"a-long-agent-string")]) == ()
    assert request_secrets([(b"X-Api-Key", b"Bearer 12345678")]) == (b"Bearer 12345678",)
    assert request_secrets([(b"a", b"x" * 8), (b"b", b"x" * 8)], [b"x" * 8, b"y" * 9]) == (b"y" * 9, b"x" * 8)


# -- the URL cache ------------------------------------------------------------


def test_url_cache_is_bounded_and_hits_return_the_same_forms() -> None:
    cache = request_module._url_cache
    cache.clear()
    size = request_module._URL_CACHE_SIZE
    assert size == 256
    for i in range(size):
        check_url(f"http://h{i}.example/")
    assert len(cache) == size
    assert cache["http://h0.example/"].url_bytes == b"http://h0.example/"
    check_url("http://one-more.example/?k=abcdefghij")
    assert list(cache) == ["http://one-more.example/?k=abcdefghij"]
    hit = cache["http://one-more.example/?k=abcdefghij"]
    assert hit == (b"http://one-more.example/?k=abcdefghij", "http://one-more.example/?...", (b"abcdefghij",))
    req = prepare("http://one-more.example/?k=abcdefghij", {}, {})
    assert (req.url_bytes, req.display_url, req.secrets) == (hit.url_bytes, hit.display, (b"abcdefghij",))


def test_http_request_defaults() -> None:
    r = HTTPRequest("u", b"u", b"", ())
    assert r.display_url == "" and r.secrets == ()


# -- edges found by mutation testing --------------------------------------------


def test_edges_of_url_splitting() -> None:
    assert check_url("http://X.example/aXb?X=1") == b"http://X.example/aXb?X=1"
    assert display_url("http://h.example/aXb?k=1") == "http://h.example/aXb?..."
    assert display_url("@h.example/x?k=1") == "h.example/x?..."
    with pytest.raises(ValueError) as e:
        check_url("http://[::1]]/")
    assert str(e.value) == "url 'http://[::1]]/' has text after the IPv6 address; only ':port' may follow ']'"


def test_edges_of_query_secrets() -> None:
    assert prepare("https://h.example/?=12345678", {}, {}).secrets == (b"12345678",)
    assert prepare("https://h.example/a=?k=12345678", {}, {}).secrets == (b"12345678",)


def test_a_mapping_that_is_not_a_dict() -> None:
    from types import MappingProxyType

    assert encode_body(MappingProxyType({"b": 1})) == b'{"b":1}'


def test_only_spaces_and_tabs_are_stripped_from_values_and_tokens() -> None:
    assert normalize_headers({"X": "XaX"}) == [(b"X", b"XaX")]
    assert request_secrets([(b"Authorization", b"Bearer XtokenX12")]) == (b"Bearer XtokenX12", b"XtokenX12")


def test_a_shown_header_does_not_hide_the_ones_after_it() -> None:
    assert request_secrets([(b"User-Agent", b"agent/1.0 long"), (b"X-Key", b"12345678")]) == (b"12345678",)


# -- the Client's additions: method, base URLs, joining -------------------------


def test_prepare_method_default_and_get() -> None:
    from nous_twisted.request import prepare

    assert prepare(URL, b"", None).method == b"POST"
    with pytest.raises(TypeError) as e:
        prepare(URL, {"a": 1}, None, method=b"GET")
    assert str(e.value) == "a GET request has no body: pass body=None"
    get = prepare(URL, None, None, method=b"GET", accept=b"application/json")
    assert get.method == b"GET" and get.body == b""
    assert get.headers == (
        (b"accept", b"application/json"),
        (b"user-agent", USER_AGENT),
        (b"accept-encoding", b"gzip, deflate"),
    )
    assert prepare(URL, b"x", None, method=b"PUT").headers[0] == (b"content-type", b"application/json")
    assert prepare(URL, b"", None).pool_timeout is None and prepare(URL, b"", None).proxy is None


def test_check_base_url() -> None:
    from nous_twisted.request import check_base_url

    assert check_base_url(None) is None
    assert check_base_url("https://api.example.com/v1") == "https://api.example.com/v1"
    for bad in ("https://api.example.com/v1?key=abcdefgh", "https://api.example.com/v1#frag"):
        with pytest.raises(ValueError) as e:
            check_base_url(bad)
        assert "abcdefgh" not in str(e.value)
        assert str(e.value).endswith("has a query or fragment; put query parameters in each call's path")
        assert str(e.value).startswith("base_url 'https://api.example.com/v1")
    with pytest.raises(TypeError):
        check_base_url(3)
    with pytest.raises(ValueError, match="no scheme"):
        check_base_url("api.example.com/v1")


@pytest.mark.parametrize(
    "base, url, joined",
    [
        ("https://a.example/v1", "/chat/completions", "https://a.example/v1/chat/completions"),
        ("https://a.example/v1/", "/chat", "https://a.example/v1/chat"),
        ("https://a.example/v1//", "//chat", "https://a.example/v1/chat"),
        ("https://a.example/v1", "chat", "https://a.example/v1/chat"),
        ("https://a.example", "", "https://a.example/"),
        ("https://a.example/v1", "/x?q=1", "https://a.example/v1/x?q=1"),
        ("https://a.example/v1", "https://b.example/y", "https://b.example/y"),
        ("https://a.example/v1", "git+ssh://b/y", "git+ssh://b/y"),
        ("https://a.example/v1", "a-b.c://b/y", "a-b.c://b/y"),
        ("https://a.example/v1", "1http://b/y", "https://a.example/v1/1http://b/y"),
        ("https://a.example/v1", "http:/b/y", "https://a.example/v1/http:/b/y"),
        (None, "https://b.example/y", "https://b.example/y"),
        (None, "api.example.com/v1", "api.example.com/v1"),
    ],
)
def test_join_url(base: str | None, url: str, joined: str) -> None:
    from nous_twisted.request import join_url

    assert join_url(base, url) == joined


def test_join_url_errors() -> None:
    from nous_twisted.request import join_url

    assert join_url("https://a.example", 3) == 3  # prepare() reports the type
    assert join_url(None, b"/x") == b"/x"
    with pytest.raises(ValueError) as e:
        join_url(None, "/v1/chat?key=sk-secret-value")
    assert str(e.value) == (
        "'/v1/chat' is a relative URL and there is no base_url: pass a full URL "
        "('https://api.example.com/v1/chat/completions') or use Client(base_url=...)"
    )
    with pytest.raises(ValueError) as e:
        join_url(None, "/" + "a" * 100)
    assert str(e.value).startswith("'/" + "a" * 79 + "' is a relative URL")


def test_join_url_edges() -> None:
    from nous_twisted.request import join_url

    # only a trailing or leading slash is dropped, never a letter
    assert join_url("https://a.example/vX", "/c") == "https://a.example/vX/c"
    assert join_url("https://a.example/v1", "Xray") == "https://a.example/v1/Xray"
    # the message shows the path before the first "?", nothing after it
    with pytest.raises(ValueError) as e:
        join_url(None, "/a?b?key=c")
    assert str(e.value).startswith("'/a' is a relative URL")


# -- the headers cache ----------------------------------------------------------


def _uncached(url: str, headers: Any, **kw: Any) -> HTTPRequest:
    request_module._headers_cache.clear()
    return prepare(url, {}, headers, **kw)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-abcdefghijkl", "X-Custom": "  v\t"},
        [("authorization", "Bearer sk-abcdefghijkl"), ("User-Agent", "me/1")],
        (("Accept-Encoding", "br"), ("X-Api-Key", b"0123456789")),
        {},
        [],
    ],
)
def test_headers_cache_hits_give_what_a_miss_gives(headers: Any) -> None:
    first = _uncached("http://h.example/v1", headers)
    assert len(request_module._headers_cache) == 1
    again = prepare("http://h.example/v1", {}, type(headers)(headers))  # equal content, another object
    assert again == first
    assert len(request_module._headers_cache) == 1
    assert again.headers is first.headers  # served from the cache


def test_headers_cache_key_holds_defaults_method_and_accept() -> None:
    request_module._headers_cache.clear()
    defaults = ((b"x-default", b"d"),)
    plain = prepare("http://h.example/", {}, {"A": "1"})
    with_defaults = prepare("http://h.example/", {}, {"A": "1"}, defaults=defaults)
    get = prepare("http://h.example/", None, {"A": "1"}, method=b"GET", accept=b"application/json")
    get_no_accept = prepare("http://h.example/", None, {"A": "1"}, method=b"GET")
    assert len(request_module._headers_cache) == 4
    assert (b"x-default", b"d") in with_defaults.headers and (b"x-default", b"d") not in plain.headers
    assert (b"content-type", b"application/json") in plain.headers
    assert all(n != b"content-type" for n, _ in get.headers)
    assert (b"accept", b"application/json") in get.headers
    assert all(n != b"accept" for n, _ in get_no_accept.headers)


def test_headers_cache_skips_other_kinds_and_unhashable_items() -> None:
    request_module._headers_cache.clear()
    od = OrderedDict([("X-Key", "0123456789")])
    assert prepare("http://h.example/", {}, od).secrets == (b"0123456789",)
    assert prepare("http://h.example/", {}, (p for p in [("X-Key", "0123456789")])).secrets == (b"0123456789",)
    assert len(request_module._headers_cache) == 0
    with pytest.raises(TypeError, match="header #0 value must be str, not list"):
        prepare("http://h.example/", {}, {"X": ["a"]})
    with pytest.raises(TypeError, match="header #0 must be a"):
        prepare("http://h.example/", {}, [["X", "a"]])
    assert len(request_module._headers_cache) == 0


def test_headers_cache_never_holds_refused_headers() -> None:
    request_module._headers_cache.clear()
    for bad in ({"Host": "x"}, {"X": "a\r\nb"}, {"bad name": "v"}, {1: "v"}):
        with pytest.raises((TypeError, ValueError)):
            prepare("http://h.example/", {}, bad)
    assert len(request_module._headers_cache) == 0


def test_headers_cache_is_bounded() -> None:
    cache = request_module._headers_cache
    cache.clear()
    size = request_module._HEADERS_CACHE_SIZE
    assert size == 256
    for i in range(size):
        prepare("http://h.example/", {}, {"X-N": str(i)})
    assert len(cache) == size
    prepare("http://h.example/", {}, {"X-N": "one more"})
    assert len(cache) == 1


def test_query_secrets_join_cached_header_secrets() -> None:
    request_module._headers_cache.clear()
    headers = {"Authorization": "Bearer sk-abcdefghijkl"}
    plain = prepare("http://h.example/v1", {}, headers)
    with_key = prepare("http://h.example/v1?key=AIzaSecretKey123", {}, headers)
    assert plain.secrets == (b"Bearer sk-abcdefghijkl", b"sk-abcdefghijkl")
    assert with_key.secrets == (b"Bearer sk-abcdefghijkl", b"AIzaSecretKey123", b"sk-abcdefghijkl")
    assert prepare("http://h.example/v1", {}, headers).secrets == plain.secrets


class _UnhashableStr(str):
    __hash__ = None  # type: ignore[assignment]


def test_unhashable_but_valid_headers_are_prepared_without_the_cache() -> None:
    request_module._headers_cache.clear()
    value = _UnhashableStr("Bearer sk-abcdefghijkl")
    defaults = ((b"x-default", b"d"),)
    get = prepare("http://h.example/", None, [("Authorization", value)], defaults=defaults, method=b"GET",
                  accept=b"application/json")
    assert len(request_module._headers_cache) == 0
    assert get.headers == (
        (b"x-default", b"d"), (b"Authorization", b"Bearer sk-abcdefghijkl"), (b"accept", b"application/json"),
        (b"user-agent", request_module.USER_AGENT), (b"accept-encoding", request_module.ACCEPT_ENCODING),
    )
    assert get.secrets == (b"Bearer sk-abcdefghijkl", b"sk-abcdefghijkl")
    posted = prepare("http://h.example/", {}, {"Authorization": value}, defaults=defaults)
    assert (b"content-type", b"application/json") in posted.headers and (b"x-default", b"d") in posted.headers


@pytest.mark.parametrize("method", [b"POST", b"GET"])
def test_prepare_builds_the_same_request_as_the_constructor(method: bytes) -> None:
    """prepare() fills an HTTPRequest's fields itself (faster than the frozen
    dataclass's __init__): every field, as the constructor would."""
    import dataclasses

    from nous_twisted.request import HTTPRequest, prepare

    r = prepare("https://api.example/v1?key=s3cret", {"a": 1} if method == b"POST" else None,
                {"Authorization": "Bearer k"}, method=method, pool_timeout=2.5)
    fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(HTTPRequest)}
    assert set(vars(r)) == set(fields)
    assert r == HTTPRequest(**fields) and hash(r) == hash(HTTPRequest(**fields))
    assert (r.method, r.pool_timeout, r.proxy) == (method, 2.5, None)
    assert r.url == "https://api.example/v1?key=s3cret" and r.url_bytes == b"https://api.example/v1?key=s3cret"
    assert "s3cret" not in r.display_url and b"Bearer k" in r.secrets
    assert r.body == (b'{"a":1}' if method == b"POST" else b"")
    assert dict(r.headers)[b"Authorization"] == b"Bearer k"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.url = "x"  # type: ignore[misc]

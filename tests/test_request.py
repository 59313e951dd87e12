"""request.py alone (no reactor): what prepare() refuses, what it accepts,
and that a refused URL is one the transport itself would fail on later."""

from __future__ import annotations

import socket
import unicodedata
from typing import Any

import idna
import pytest
from hyperlink import EncodedURL
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.web._newclient import _ensureValidURI
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported

from nous_twisted import request as request_module
from nous_twisted.request import ACCEPT_ENCODING, display_url, normalize_headers, prepare, request_secrets

URL = "http://127.0.0.1:9/v1/chat/completions"
SECRET = "sk-live-0123456789SECRET"

# ---------------------------------------------------------------- headers

REFUSED_NAMES = [
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "Connection",
    "Keep-Alive",
    "Upgrade",
    "TE",
    "Trailer",
    "Proxy-Connection",
]


@pytest.mark.parametrize("name", REFUSED_NAMES)
@pytest.mark.parametrize("case", [str, str.lower, str.upper])
def test_framing_and_hop_by_hop_headers_are_refused(name: str, case: Any) -> None:
    given = case(name)
    for headers in ({given: "0"}, [(given, "0")], [(given.encode("ascii"), b"0")], [("X-Ok", "1"), (given, "")]):
        with pytest.raises(ValueError, match=f"header '{given}' is refused") as info:
            prepare(URL, {}, headers)
        assert "remove it" in str(info.value)


def test_refused_header_messages_say_why() -> None:
    with pytest.raises(ValueError, match="frames the body itself"):
        normalize_headers({"content-length": "3"})
    with pytest.raises(ValueError, match="derived from the URL"):
        normalize_headers({"Host": "example.com"})
    with pytest.raises(ValueError, match="belongs to the pool"):
        normalize_headers({"Connection": "close"})


def test_lookalike_names_are_not_refused() -> None:
    hs = normalize_headers({"X-Content-Length": "1", "Hosts": "2", "Tee": "3", "Upgrade-Insecure-Requests": "1"})
    assert [n for n, _ in hs] == [b"X-Content-Length", b"Hosts", b"Tee", b"Upgrade-Insecure-Requests"]


# Every header that carries a credential in the APIs this library serves.
SECRET_HEADER_NAMES = ["Authorization", "Proxy-Authorization", "x-api-key", "api-key", "x-goog-api-key", "Cookie"]

CONTROL_BYTES = [b for b in range(0x20) if b != 0x09] + [0x7F]


@pytest.mark.parametrize("byte", CONTROL_BYTES, ids=lambda b: f"0x{b:02x}")
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_control_characters_in_values_are_refused_and_redacted(byte: int, as_bytes: bool) -> None:
    value: str | bytes = f"Bearer {SECRET}{chr(byte)}tail"
    if as_bytes:
        value = value.encode("latin-1")
    for name in SECRET_HEADER_NAMES:
        with pytest.raises(ValueError) as info:
            prepare(URL, {}, [(name, value)])
        message = str(info.value)
        # What is shown: the header's name and what is wrong; what is hidden: the value.
        assert message == (
            f"the value of header {name!r} contains a control character (CR, LF or NUL, or another byte below "
            "0x20 other than tab, or DEL); value redacted; header injection is refused"
        )
        assert SECRET not in repr(info.value)


def test_tab_obs_text_and_latin1_values_pass() -> None:
    req = prepare(
        URL,
        {},
        [
            ("X-Name", "José"),
            ("X-Raw", "Jos\xc3\xa9".encode("latin-1")),
            ("X-Tab", "a\tb"),
            ("X-High", bytes(range(0x80, 0x100))),
            ("X-Pad", " \t padded \t "),
        ],
    )
    got = dict(req.headers)
    assert got[b"X-Name"] == b"Jos\xe9"
    assert got[b"X-Raw"] == "José".encode()
    assert got[b"X-Tab"] == b"a\tb"
    assert got[b"X-High"] == bytes(range(0x80, 0x100))
    assert got[b"X-Pad"] == b"padded"


def test_accept_encoding_is_the_librarys() -> None:
    for caller in ({}, {"Accept-Encoding": "br"}, [("accept-encoding", "identity"), ("ACCEPT-ENCODING", "zstd")]):
        req = prepare(URL, {}, caller)
        values = [v for n, v in req.headers if n.lower() == b"accept-encoding"]
        assert values == [ACCEPT_ENCODING] == [b"gzip, deflate"]


def test_accept_is_added_only_when_missing() -> None:
    req = prepare(URL, {}, {}, accept=b"text/event-stream")
    assert (b"accept", b"text/event-stream") in req.headers
    req = prepare(URL, {}, {"Accept": "application/x-ndjson"}, accept=b"text/event-stream")
    assert [v for n, v in req.headers if n.lower() == b"accept"] == [b"application/x-ndjson"]


# ---------------------------------------------------------------- URLs

# (url, what prepare's message says, which of the transport's paths fail on it)
BAD_URLS: list[tuple[str, str]] = [
    ("http://h:/x", "empty port"),
    ("http://h:0/x", "port 0, outside 1-65535"),
    ("http://h:65536/x", "port 65536, outside 1-65535"),
    ("http://h:99999/x", "port 99999, outside 1-65535"),
    ("http://a..b/x", "not a valid host name"),
    ("http://-bad-/x", "not a valid host name"),
    ("http://bad-.example/x", "not a valid host name"),
    ("http://ab--cd.example/x", "not a valid host name"),
    ("http://" + "a" * 64 + ".example/x", "not a valid host name"),
    ("http://" + ".".join(["a" * 63] * 3 + ["b" * 62]) + "/x", "not a valid host name"),  # 254 chars
    ("http://h_x.example/x", "not a valid host name"),
    ("http://h%41.example/x", "not a valid host name"),
    ("https://xn--zz.example/x", "not a valid host name"),
    ("http://evil\\@good.example/x", "backslash"),
    ("http://good.example\\evil/x", "backslash"),
    ("http://user:pass@host.example/x", "contains user info"),
    ("http://user@host.example/x", "contains user info"),
    ("http://:pass@host.example/x", "contains user info"),
    ("api.openai.com/v1", "has no scheme; start it with https://"),
    ("localhost:8080/v1", "has no scheme"),
    ("//host.example/x", "has no scheme"),
    ("http:/host.example/x", "is malformed"),
    ("http:///path", "has no host"),
    ("http://:8080/x", "has no host"),
    ("http://h:80:90/x", "more than one ':'"),
    ("http://::1/x", "more than one ':'"),
    ("http://[::1/x", "unclosed '['"),
    ("http://[::1]x/", "text after the IPv6 address"),
    ("http://[::g]/x", "not a valid IPv6 address"),
    ("http://[fe80::1%25eth0]/x", "zone identifiers"),
    ("http://h.example:8o/x", "not a number"),
    ("http://h.example/a b", "whitespace"),
    ("http://h.example/a\r\nInjected: 1", "control characters"),
    ("http://h.example/\x7f", "control characters"),
    ("http://ex ample/", "whitespace"),
]

# Also refused though the transport would send them somewhere: a signed or
# padded port is an ambiguity, not an address (hyperlink drops '+80').
ODD_PORTS = ["http://h.example:+80/x", "http://h.example:-1/x", "http://h.example:٨٠/x"]


@pytest.mark.parametrize("url,match", BAD_URLS + [(u, "port") for u in ODD_PORTS])
def test_prepare_refuses_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("(", r"\(")):
        prepare(url, {}, {})
    assert url not in request_module._url_cache


def test_missing_scheme_message_is_exact() -> None:
    with pytest.raises(ValueError) as info:
        prepare("api.openai.com/v1", {}, {})
    assert str(info.value).startswith("url 'api.openai.com/v1' has no scheme; start it with https://")


def _treq_wire(url: str) -> bytes:
    """What treq 26.7 does with a str URL before handing it to the agent."""
    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


def _agent_checks(wire: bytes) -> None:
    """What Agent.request, the endpoint factory, HostnameEndpoint, the TLS
    policy and the resolver do with the wire bytes before any I/O; raises
    where the transport would fail."""
    uri = URI.fromBytes(_ensureValidURI(wire.strip()))
    if uri.scheme not in (b"http", b"https"):  # BrowserLikePolicyForHTTPS.endpointForURI
        raise SchemeNotSupported(uri.scheme)
    host = uri.host.decode("ascii")  # Agent: "should be ASCII decodable"
    invalid, _, _ = HostnameEndpoint._hostAsBytesAndText(host)
    if invalid:  # HostnameEndpoint.connect: "invalid hostname"
        raise ValueError(f"invalid hostname {host!r}")
    if uri.scheme == b"https":
        optionsForClientTLS(host)
    # GAIResolver: getaddrinfo(host, port); numeric hosts only, so no DNS.
    # It takes any port modulo 65536: 99999 would dial 34463.
    if host.replace(".", "").isdigit():
        addr = socket.getaddrinfo(host, uri.port, type=socket.SOCK_STREAM)[0][4]
        if addr[1] != uri.port:
            raise ValueError(f"port {uri.port} dials {addr[1]}")
    if uri.port == 0:
        raise ValueError("port 0 is never connectable")


def transport_failures(url: str) -> dict[str, str]:
    """The transport's own paths that fail on ``url``: "treq" (hyperlink
    parse and to_uri, then the agent) and "agent" (the ASCII URL straight
    to twisted.web.client.Agent, as the agent backend sends it)."""
    failed: dict[str, str] = {}
    try:
        _agent_checks(_treq_wire(url))
    except Exception as e:
        failed["treq"] = type(e).__name__
    try:
        _agent_checks(url.encode("ascii"))
    except Exception as e:
        failed["agent"] = type(e).__name__
    return failed


def _numeric(url: str) -> str:
    # Hosts of the port rows, numeric so the resolver check needs no DNS.
    return url.replace("//h:", "//127.0.0.1:")


@pytest.mark.parametrize("url", [_numeric(u) for u, _ in BAD_URLS])
def test_the_transport_itself_fails_on_every_refused_url(url: str) -> None:
    assert transport_failures(url), f"the transport would send {url!r}"
    with pytest.raises(ValueError):
        prepare(url, {}, {})


GOOD_URLS = [
    "http://127.0.0.1:9/v1/chat/completions",
    "http://[::1]:8080/x",
    "http://[::1]/x",
    "http://[2001:db8::7334]:443/v1",
    "https://bücher.example/x",
    "https://BÜCHER.example/x",
    "http://例え.テスト/x",
    "https://xn--bcher-kva.example/x",
    "https://API.OpenAI.com/v1/chat/completions",
    "HTTPS://api.openai.com/v1",
    "http://h.example/x%20y%2Fz?q=%41%26b&c=d+e#frag",
    "http://h.example?x=1",
    "http://h.example#frag",
    "http://h.example",
    "http://localhost:1/x",
    "http://a.b./x",
    "http://h.example:08/x",
    "http://" + "a" * 63 + ".example/x",
    "http://" + ".".join(["a" * 63] * 3 + ["b" * 61]) + "/x",  # 253 chars
    "http://h.example/mod\u00e8le/caf\u00e9?q=\u00e9t\u00e9",
    "http://h.example/a@b/c",
    "http://h.example/a\\b",
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_urls_pass_and_the_transport_takes_their_wire_form(url: str) -> None:
    req = prepare(url, {}, {})
    assert req.url == url
    wire = req.url_bytes
    assert wire.isascii()
    _agent_checks(wire)  # the agent backend sends url_bytes
    assert URI.fromBytes(wire).originForm.startswith(b"/")  # the request line's target
    # treq sends what treq_url() gives it, unchanged, through to_uri():
    assert req.treq_url().to_uri().to_text().encode("ascii") == wire
    assert url in request_module._url_cache


def test_idn_hosts_go_as_punycode_the_way_twisted_and_hyperlink_encode_them() -> None:
    req = prepare("https://bücher.example/x", {}, {})
    assert req.url_bytes == b"https://xn--bcher-kva.example/x"
    assert req.url_bytes == _treq_wire("https://bücher.example/x")
    from twisted.internet._idna import _idnaBytes

    assert URI.fromBytes(req.url_bytes).host == _idnaBytes(unicodedata.normalize("NFC", "bücher.example"))
    assert req.display_url == "https://bücher.example/x"


def test_ipv6_literals_work_where_hyperlink_to_uri_does_not() -> None:
    # treq's own path fails on IPv6 hosts (python-hyper/hyperlink#68, #188);
    # treq_url() is what lets the treq backend send them.
    with pytest.raises(idna.IDNAError):
        _treq_wire("http://[::1]:8080/x")
    req = prepare("http://[::1]:8080/x", {}, {})
    assert req.url_bytes == b"http://[::1]:8080/x"
    uri = URI.fromBytes(req.url_bytes)
    assert (uri.host, uri.port) == (b"::1", 8080)
    assert req.treq_url().to_uri().to_text() == "http://[::1]:8080/x"


def test_percent_encoding_is_kept_and_non_ascii_is_encoded() -> None:
    assert prepare("http://h.example/x%20y?q=%41&b=c%2F", {}, {}).url_bytes == b"http://h.example/x%20y?q=%41&b=c%2F"
    assert prepare("http://127.0.0.1:9/v1/modèle", {}, ()).url_bytes == b"http://127.0.0.1:9/v1/mod%C3%A8le"
    assert prepare("http://h.example/?q=été", {}, ()).url_bytes == _treq_wire("http://h.example/?q=été")


def test_scheme_is_sent_lower_case() -> None:
    assert prepare("HTTPS://api.openai.com/v1", {}, {}).url_bytes == b"https://api.openai.com/v1"


def test_url_cache_is_used_and_never_holds_a_refused_url() -> None:
    url = "http://cache-test.example/v1/x?key=0123456789"
    request_module._url_cache.pop(url, None)
    first = prepare(url, {}, {})
    cached = request_module._url_cache[url]
    second = prepare(url, {}, {})
    assert second.url_bytes is cached.url_bytes is first.url_bytes
    assert second.display_url is cached.display
    bad = "http://user:pw@cache-test.example/"
    for _ in range(2):
        with pytest.raises(ValueError):
            prepare(bad, {}, {})
    assert bad not in request_module._url_cache


def test_url_type_errors() -> None:
    for url in (b"http://x/", None, 42):
        with pytest.raises(TypeError, match="url must be a str"):
            prepare(url, {}, {})


# ---------------------------------------------------------------- secrets in messages, display, repr

# (url, what is shown of it: in display_url(), in the message that refuses it, in a repr)
LEAKY_URLS = [
    (f"http://user:{SECRET}@h.example/x", "http://h.example/x"),
    (f"http://{SECRET}@h.example/x", "http://h.example/x"),
    (f"http://user:{SECRET}/more@h.example/x", "http://h.example/x"),  # a password with a slash in it
    (f"http://user:{SECRET}@h.example:/x", "http://h.example:/x"),
    (f"http://u:{SECRET}@-bad-/x", "http://-bad-/x"),
    (f"http://u:{SECRET}@h.example\\x/", "http://h.example\\x/"),
    (f"https://h.example/x?key={SECRET}", "https://h.example/x?..."),
    (f"https://h.example:0/x?key={SECRET}", "https://h.example:0/x?..."),
    (f"https://h..example/x?key={SECRET}&b=1", "https://h..example/x?..."),
    (f"h.example/x?key={SECRET}", "h.example/x?..."),
    (f"http://u:{SECRET}@h.example/x y", "http://h.example/x y"),
]


@pytest.mark.parametrize("url,shown", LEAKY_URLS)
def test_user_info_and_query_values_never_shown(url: str, shown: str) -> None:
    assert display_url(url) == shown
    try:
        req = prepare(url, {}, {})
    except ValueError as e:
        assert SECRET not in str(e) and SECRET not in repr(e)
        assert str(e).startswith(f"url {shown!r}")  # what is shown: the URL without the secret
    else:
        assert SECRET not in req.display_url and SECRET not in repr(req)
        assert req.display_url == shown
        assert repr(req).startswith(f"HTTPRequest(POST {shown}, 2 bytes, headers=[")


def test_user_info_message_says_to_use_a_header() -> None:
    with pytest.raises(ValueError) as info:
        prepare(f"http://user:{SECRET}@api.example/v1", {}, {})
    assert str(info.value) == (
        "url 'http://api.example/v1' contains user info (user:password@); credentials are not taken "
        "from the URL: put them in a header (Authorization) instead"
    )


def test_display_url() -> None:
    assert display_url("https://api.example/v1/x?key=abc#f") == "https://api.example/v1/x?..."
    assert display_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert display_url("http://h.example/a@b") == "http://h.example/a@b"
    assert display_url("https://u:p@h.example/x?y") == "https://h.example/x?..."


SHOWN = {
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "User-Agent": "nous-twisted/0.1",
    "OpenAI-Beta": "assistants=v2",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "prompt-caching-2024-07-31",
}
HIDDEN = [
    "Authorization",
    "Proxy-Authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "Cookie",
    "X-Auth-Token",
    "Ocp-Apim-Subscription-Key",
    "OpenAI-Organization",
    "X-Trace",
]


def test_repr_shows_only_the_allowlist() -> None:
    headers = dict(SHOWN)
    headers.update({name: f"{SECRET}-{i}" for i, name in enumerate(HIDDEN)})
    text = repr(prepare("https://api.example/v1/messages?key=GOOGLEKEY&alt=sse", {"a": 1}, headers))
    assert text.startswith("HTTPRequest(POST https://api.example/v1/messages?..., 7 bytes, headers=[")
    for name, value in SHOWN.items():
        assert f"{name}: {value}" in text
    assert "accept-encoding: gzip, deflate" in text
    for name in HIDDEN:
        assert f"{name}: <redacted>" in text
    assert SECRET not in text and "GOOGLEKEY" not in text and "alt=sse" not in text


# ---------------------------------------------------------------- HTTPRequest.secrets


def test_secrets_cover_tokens_keys_and_query_values() -> None:
    req = prepare(
        "https://api.example/v1?key=AIzaQUERYKEY&alt=sse&q=a%20long%20value",
        {},
        {
            "Authorization": "Bearer sk-TOKEN-123456",
            "Proxy-Authorization": "Basic dXNlcjpwYXNzd29yZA==",
            "X-Auth-Token": "tok-12345678",
            "X-Short": "1234567",
            "anthropic-version": "2023-06-01",
            "User-Agent": "a-long-user-agent/1.0",
        },
    )
    s = set(req.secrets)
    assert {b"Bearer sk-TOKEN-123456", b"sk-TOKEN-123456"} <= s
    assert {b"Basic dXNlcjpwYXNzd29yZA==", b"dXNlcjpwYXNzd29yZA=="} <= s
    assert b"tok-12345678" in s and b"AIzaQUERYKEY" in s
    assert {b"a%20long%20value", b"a long value"} <= s
    assert b"1234567" not in s and b"sse" not in s  # too short to be a key
    assert b"2023-06-01" not in s and b"a-long-user-agent/1.0" not in s  # allowlisted
    assert b"application/json" not in s and ACCEPT_ENCODING not in s
    assert [len(x) for x in req.secrets] == sorted((len(x) for x in req.secrets), reverse=True)


def test_request_secrets_alone() -> None:
    assert request_secrets([(b"authorization", b"Bearer short")]) == (b"Bearer short",)  # not "short" alone
    assert request_secrets([], [b"q" * 8, b"q" * 7]) == (b"q" * 8,)
    assert request_secrets([(b"Authorization", b"sk-bare-token-no-scheme")]) == (b"sk-bare-token-no-scheme",)
    assert prepare(URL, {}, {}).secrets == ()

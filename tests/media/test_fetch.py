"""SafeFetcher against real local servers: SSRF refusals, pinned connections, caps, deadlines."""

from __future__ import annotations

import ipaddress
import json
import ssl

import pytest

from opendance.errors import MediaError
from opendance.media.fetch import SafeFetcher, address_refusal, parse_ip_literal

KiB = 1024


def fetch_error(run_fetcher, url: str, param: str = "image", max_bytes: int = 1 << 20, **options) -> MediaError:
    with pytest.raises(MediaError) as info:
        run_fetcher(lambda f: f.fetch(url, param=param, max_bytes=max_bytes), **options)
    err = info.value
    assert err.param == param and err.status == 400
    return err


# -- what may be fetched -----------------------------------------------------------------------


def test_allow_listed_loopback_server_is_fetched(run_fetcher, upstream):
    url = upstream.add("/a.png", b"pixels" * 100)
    data = run_fetcher(lambda f: f.fetch(url, param="image", max_bytes=KiB), allow_hosts=["127.0.0.1"])
    assert data == b"pixels" * 100
    assert upstream.requests[0]["headers"]["Host"] == f"127.0.0.1:{upstream.port}"


@pytest.mark.parametrize("allow", [["127.0.0.0/8"], ["LOCALHOST"], ["localhost."]])
def test_allow_list_takes_networks_and_names(run_fetcher, upstream, allow):
    upstream.add("/a", b"ok")
    url = upstream.url("/a", host="localhost" if "0/8" not in allow[0] else None)
    assert run_fetcher(lambda f: f.fetch(url, param="image", max_bytes=KiB), allow_hosts=allow) == b"ok"


def test_data_exactly_at_the_cap_is_accepted(run_fetcher, upstream):
    url = upstream.add("/exact", b"x" * KiB)
    assert len(run_fetcher(lambda f: f.fetch(url, param="image", max_bytes=KiB), allow_hosts=["127.0.0.1"])) == KiB


# -- SSRF: refused before any connection ---------------------------------------------------------


@pytest.mark.parametrize(
    "host, kind",
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.20", "private"),
        ("169.254.169.254", "link-local"),
        ("[::1]", "loopback"),
        ("0x7f.1", "loopback"),
        ("2130706433", "loopback"),
        ("127.1", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:169.254.169.254]", "link-local"),
        ("[2002:7f00:1::]", "loopback"),  # 6to4 around 127.0.0.1
        ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 around 169.254.169.254
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("[fd00::1]", "unique-local"),
        ("[fe80::1]", "link-local"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "non-public"),
    ],
)
def test_private_addresses_are_refused_by_default(run_fetcher, host, kind):
    err = fetch_error(run_fetcher, f"http://{host}:8080/x.png", param="images[2]")
    assert err.code == "url_not_allowed"
    assert f"images[2]: the host {host.strip('[]')} resolves to a" in err.message
    assert f" {kind} address" in err.message
    assert "OPENDANCE_ALLOW_HOSTS" in err.message


def test_loopback_refused_even_with_a_server_listening(run_fetcher, upstream):
    url = upstream.add("/secret", b"secret")
    err = fetch_error(run_fetcher, url)
    assert err.code == "url_not_allowed" and "loopback" in err.message
    assert upstream.requests == []


def test_a_name_that_resolves_to_loopback_is_refused(run_fetcher, upstream):
    url = upstream.add("/secret", b"secret")
    err = fetch_error(run_fetcher, url.replace("127.0.0.1", "localhost"))
    assert err.code == "url_not_allowed"
    assert err.message.startswith("image: the host localhost resolves to a loopback address (")
    assert upstream.requests == []


def test_any_bad_address_among_several_refuses(run_fetcher, name_map):
    names = name_map({"mixed.test": [["93.184.216.34", "10.1.2.3"]]})
    err = fetch_error(run_fetcher, "http://mixed.test/a.png", resolver=names)
    assert err.code == "url_not_allowed" and "(10.1.2.3)" in err.message


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/", "data:image/png;base64,AAAA"]
)
def test_other_schemes_are_refused(run_fetcher, url):
    err = fetch_error(run_fetcher, url, param="videos[0]")
    assert err.code == "unsupported_url_scheme"
    assert "videos[0]: the URL scheme" in err.message and "passwd" not in err.message


@pytest.mark.parametrize(
    "target", ["http://127.0.0.2:{port}/secret", "http://[::1]:{port}/secret", "http://169.254.169.254/latest/meta-data/"]
)
def test_redirect_to_a_private_address_is_refused(run_fetcher, upstream, target):
    url = upstream.redirect("/hop", target.format(port=upstream.port))
    upstream.add("/secret", b"secret")
    err = fetch_error(run_fetcher, url, allow_hosts=["127.0.0.1"])
    assert err.code == "url_not_allowed"
    assert upstream.paths() == ["/hop"]


def test_redirect_to_another_scheme_is_refused(run_fetcher, upstream):
    url = upstream.redirect("/hop", "file:///etc/passwd")
    err = fetch_error(run_fetcher, url, allow_hosts=["127.0.0.1"])
    assert err.code == "unsupported_url_scheme"


def test_messages_never_carry_the_query(run_fetcher, upstream):
    err = fetch_error(run_fetcher, "http://10.0.0.1/a.png?token=SECRET123")
    assert "SECRET123" not in err.message
    err = fetch_error(run_fetcher, upstream.url("/missing?sig=SECRET456"), allow_hosts=["127.0.0.1"])
    assert "SECRET456" not in err.message and "HTTP 404" in err.message


# -- the connection goes to the checked address ---------------------------------------------------


def test_dns_rebinding_cannot_move_the_connection(run_fetcher, make_upstream, name_map):
    """The name answers 127.0.0.2 (allow-listed) the first time and 10.0.0.1 afterwards: the
    fetch resolves once and connects to the address it checked, with the name in Host."""
    other = make_upstream("127.0.0.2")
    other.add("/a.png", b"from 127.0.0.2")
    names = name_map({"media.rebind.test": [["127.0.0.2"], ["10.0.0.1"]]})
    url = f"http://media.rebind.test:{other.port}/a.png?x=1"
    data = run_fetcher(lambda f: f.fetch(url, param="image", max_bytes=KiB), allow_hosts=["127.0.0.2"], resolver=names)
    assert data == b"from 127.0.0.2"
    assert names.calls == ["media.rebind.test"]  # one lookup: no second answer was ever asked for
    (request,) = other.requests
    assert request["local"] == "127.0.0.2"
    assert request["headers"]["Host"] == f"media.rebind.test:{other.port}"
    assert request["path"] == "/a.png?x=1"


def test_each_redirect_hop_is_resolved_once_and_pinned(run_fetcher, make_upstream, name_map):
    first, second = make_upstream("127.0.0.1"), make_upstream("127.0.0.3")
    second.add("/b", b"second")
    first.redirect("/a", f"http://two.test:{second.port}/b")
    names = name_map({"one.test": [["127.0.0.1"]], "two.test": [["127.0.0.3"], ["127.0.0.1"]]})
    data = run_fetcher(
        lambda f: f.fetch(f"http://one.test:{first.port}/a", param="image", max_bytes=KiB),
        allow_hosts=["127.0.0.0/8"],
        resolver=names,
    )
    assert data == b"second"
    assert names.calls == ["one.test", "two.test"]
    assert second.requests[0]["local"] == "127.0.0.3"
    assert second.requests[0]["headers"]["Host"] == f"two.test:{second.port}"


def test_https_uses_the_name_for_sni_and_the_certificate(run_fetcher, make_upstream, name_map, tls_files):
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    up = make_upstream("127.0.0.1", tls=server_ctx)
    up.add("/a.png", b"over tls")
    trust = ssl.create_default_context(cafile=str(cert))
    names = name_map({"media.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    options = dict(allow_hosts=["127.0.0.1"], resolver=names, verify=trust)
    data = run_fetcher(lambda f: f.fetch(f"https://media.test:{up.port}/a.png", param="image", max_bytes=KiB), **options)
    assert data == b"over tls"
    assert up.sni == ["media.test"]
    assert up.requests[0]["headers"]["Host"] == f"media.test:{up.port}"
    # The same address under a name the certificate does not cover: the check uses the name.
    err = fetch_error(run_fetcher, f"https://other.test:{up.port}/a.png", **options)
    assert err.code == "media_fetch_failed" and "other.test" in err.message


# -- redirects -----------------------------------------------------------------------------------


def test_relative_redirects_are_followed(run_fetcher, upstream):
    upstream.add("/final", b"done")
    upstream.redirect("/b", "/final", status=307)
    url = upstream.redirect("/a", "b", status=301)
    assert run_fetcher(lambda f: f.fetch(url, param="image", max_bytes=KiB), allow_hosts=["127.0.0.1"]) == b"done"
    assert upstream.paths() == ["/a", "/b", "/final"]


def test_redirect_loop_is_refused(run_fetcher, upstream):
    upstream.redirect("/loop2", "/loop1")
    url = upstream.redirect("/loop1", "/loop2")
    err = fetch_error(run_fetcher, url, allow_hosts=["127.0.0.1"], max_redirects=10)
    assert err.code == "too_many_redirects" and "redirect loop" in err.message
    assert upstream.paths() == ["/loop1", "/loop2"]


def test_too_many_redirects(run_fetcher, upstream):
    upstream.add("/r4", b"end")
    for i in range(4):
        upstream.redirect(f"/r{i}", f"/r{i + 1}")
    err = fetch_error(run_fetcher, upstream.url("/r0"), allow_hosts=["127.0.0.1"], max_redirects=3)
    assert err.code == "too_many_redirects" and "more than 3 redirects" in err.message
    data = run_fetcher(
        lambda f: f.fetch(upstream.url("/r0"), param="image", max_bytes=KiB), allow_hosts=["127.0.0.1"], max_redirects=4
    )
    assert data == b"end"


# -- upstream failures, caps and deadlines -------------------------------------------------------


def test_http_error_status(run_fetcher, upstream):
    err = fetch_error(run_fetcher, upstream.url("/missing"), allow_hosts=["127.0.0.1"])
    assert err.code == "media_fetch_failed"
    assert err.message == "image could not be fetched: HTTP 404 from 127.0.0.1"


def test_connection_refused(run_fetcher, upstream):
    url = upstream.url("/a")
    upstream.close()
    err = fetch_error(run_fetcher, url, allow_hosts=["127.0.0.1"])
    assert err.code == "media_fetch_failed" and "could not connect to 127.0.0.1" in err.message


def test_declared_length_over_the_cap(run_fetcher, upstream):
    url = upstream.add("/big", b"x" * (4 * KiB))
    err = fetch_error(run_fetcher, url, param="images[2]", max_bytes=KiB, allow_hosts=["127.0.0.1"])
    assert err.code == "media_too_large" and err.message == "images[2] is larger than 1 KiB"


@pytest.mark.timeout(20)
def test_endless_chunked_response_stops_at_the_cap(run_fetcher, upstream):
    url = upstream.endless("/forever")
    err = fetch_error(run_fetcher, url, param="videos[1]", max_bytes=3 * 1024 * KiB, allow_hosts=["127.0.0.1"])
    assert err.code == "media_too_large" and err.message == "videos[1] is larger than 3 MiB"


@pytest.mark.timeout(20)
def test_silent_upstream_hits_the_read_timeout(run_fetcher, upstream):
    url = upstream.stall("/slow", after=b"partial")
    err = fetch_error(run_fetcher, url, allow_hosts=["127.0.0.1"], read_timeout=0.3)
    assert err.code == "media_fetch_failed"
    assert err.message == "image could not be fetched: 127.0.0.1 sent nothing for 0.3 s"


@pytest.mark.timeout(20)
def test_trickling_upstream_hits_the_total_deadline(run_fetcher, upstream):
    url = upstream.trickle("/trickle")
    err = fetch_error(run_fetcher, url, allow_hosts=["127.0.0.1"], read_timeout=5.0, total_timeout=0.5)
    assert err.code == "media_fetch_failed" and "took longer than 0.5 s" in err.message


@pytest.mark.timeout(20)
def test_slow_dns_hits_the_connect_timeout(run_fetcher, name_map):
    names = name_map({"slow.test": [["93.184.216.34"]]}, delay=30)
    err = fetch_error(run_fetcher, "http://slow.test/a.png", resolver=names, connect_timeout=0.2)
    assert err.code == "media_fetch_failed" and "did not resolve within 0.2 s" in err.message


def test_unknown_host(run_fetcher, name_map):
    err = fetch_error(run_fetcher, "http://nowhere.test/a.png", resolver=name_map({}))
    assert err.code == "media_fetch_failed" and "nowhere.test does not resolve" in err.message


# -- check_url and post_json (callbacks) ---------------------------------------------------------


def test_check_url(run_fetcher, name_map):
    param = "extra_body.callback_url"
    names = name_map({"hooks.example": [["93.184.216.34"]], "inside.example": [["10.9.8.7"]]})
    assert run_fetcher(lambda f: f.check_url("https://hooks.example/cb?k=1", param=param), resolver=names) is None
    for url, code in [
        ("http://inside.example/cb", "url_not_allowed"),
        ("http://169.254.169.254/", "url_not_allowed"),
        ("file:///etc/passwd", "unsupported_url_scheme"),
        ("http://missing.example/", "invalid_url"),
        ("http:///nohost", "invalid_url"),
    ]:
        with pytest.raises(MediaError) as info:
            run_fetcher(lambda f: f.check_url(url, param=param), resolver=names)
        assert (info.value.param, info.value.code) == (param, code), url


def test_post_json_goes_through_the_same_checks(run_fetcher, upstream):
    upstream.add("/cb", b"", status=204)
    upstream.redirect("/moved", "http://10.0.0.1/")
    payload = {"id": "task_1", "status": "completed"}
    assert run_fetcher(lambda f: f.post_json(upstream.url("/cb"), payload, timeout=5), allow_hosts=["127.0.0.1"]) == 204
    assert json.loads(upstream.requests[0]["body"]) == payload
    assert upstream.requests[0]["method"] == "POST"
    # A redirect is answered with its status, never followed.
    assert run_fetcher(lambda f: f.post_json(upstream.url("/moved"), payload, timeout=5), allow_hosts=["127.0.0.1"]) == 302
    with pytest.raises(ConnectionError, match="loopback"):
        run_fetcher(lambda f: f.post_json(upstream.url("/cb"), payload, timeout=5))
    assert len(upstream.requests) == 2


@pytest.mark.timeout(20)
def test_post_json_times_out_with_a_plain_exception(run_fetcher, upstream):
    upstream.hang("/cb")
    with pytest.raises(ConnectionError, match="no answer within 0.3 s"):
        run_fetcher(lambda f: f.post_json(upstream.url("/cb"), {"a": 1}, timeout=0.3), allow_hosts=["127.0.0.1"])


# -- the address rules themselves ----------------------------------------------------------------


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "2002:808:808::1"])
def test_public_addresses_pass(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host, expected",
    [("0x7f.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("::1", "::1"), ("cafe.be", None), ("example.com", None)],
)
def test_ip_literals(host, expected):
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed else None) == expected


def test_from_settings(upstream):
    import asyncio

    from opendance.config import Settings

    url = upstream.add("/a", b"ok")

    async def main(settings: Settings) -> bytes:
        fetcher = SafeFetcher.from_settings(settings)
        try:
            return await fetcher.fetch(url, param="image", max_bytes=KiB)
        finally:
            await fetcher.aclose()

    assert asyncio.run(main(Settings(allow_hosts="10.0.0.0/8, 127.0.0.1"))) == b"ok"
    with pytest.raises(MediaError):
        asyncio.run(main(Settings(allow_hosts="10.0.0.0/8")))

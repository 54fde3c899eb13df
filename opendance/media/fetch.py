"""Fetch media URLs without server-side request forgery.

Every URL (and every redirect target) is parsed, its scheme checked (http/https only), its host
resolved once, and every resolved address checked against the private/loopback/link-local/...
ranges. The connection then goes to that checked address: the request is sent to
``scheme://<address>:port/path`` with the original ``Host`` header and, for https, the original
name as TLS SNI (so the certificate is still checked against the name). No second DNS lookup
happens, so a name that re-binds to 127.0.0.1 between check and connect cannot reach it.

Operators can allow-list host names, addresses or networks (``OPENDANCE_ALLOW_HOSTS``); an
allow-listed host or address skips the private-address refusal, nothing else.

``fetch_into`` hands the body to a ``Sink`` as it arrives (intake spools it to disk), so a
download never sits in memory; ``fetch`` collects it in memory, for small things.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Protocol

import httpx

from ..errors import MediaError
from .datauri import format_size

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LEGACY_IPV4_CHARS = set("0123456789abcdefxABCDEFX.")
# Checked in this order; each is the ``ipaddress`` flag ``is_<kind>``.
_REFUSED_KINDS = ("unspecified", "loopback", "link-local", "multicast", "private", "reserved")


class Sink(Protocol):
    """Where ``fetch_into`` puts a body; both calls may wait (for room in a budget, for a disk)."""

    async def expect(self, size: int) -> None:
        """The body will be ``size`` bytes (a ``Content-Length`` within the cap), before any arrive."""

    async def write(self, chunk: bytes) -> None: ...


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    async def expect(self, size: int) -> None:
        pass

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


def _fetch_failed(param: str, reason: str, code: str = "media_fetch_failed") -> MediaError:
    return MediaError(f"{param} could not be fetched: {reason}", param=param, code=code)


class _NetworkFailure(Exception):
    """A connection, TLS, timeout or protocol failure; the message is the reason, for people."""


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached (``"loopback"``, ``"private"`` ...), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_refusal(ip.ipv4_mapped)
        # 6to4, Teredo and NAT64 addresses carry an IPv4 address that the packets end up at.
        embedded = [ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if reasons := [r for inner in embedded if inner is not None and (r := address_refusal(inner))]:
            return reasons[0]
        if ip in _UNIQUE_LOCAL:
            return "unique-local"
    for kind in _REFUSED_KINDS:
        if getattr(ip, "is_" + kind.replace("-", "_")):
            return kind
    # Not global although none of the above: shared address space 100.64/10, 192.0.0/24 ...
    return None if ip.is_global else "non-public"


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP written as the host: ``127.0.0.1``, ``::1``, and the legacy IPv4 forms that
    ``inet_aton`` (and so the system resolver) accepts: ``0x7f.1``, ``127.1``, ``2130706433``."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # inet_aton ignores what follows a space, so only digits, dots and hex letters go in
        return ipaddress.IPv4Address(socket.inet_aton(host)) if host and set(host) <= _LEGACY_IPV4_CHARS else None
    except OSError:
        return None


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class SafeFetcher:
    """An async HTTP client that only reaches public addresses (or allow-listed ones)."""

    def __init__(
        self,
        allow_hosts: list[str],
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        max_redirects: int,
        *,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``resolver`` (host, port) -> addresses replaces the system resolver (tests, custom DNS);
        ``verify`` is httpx's TLS setting (an ``SSLContext`` for a private CA)."""
        self._allowed_names: set[str] = set()
        self._allowed_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in (e.strip() for e in allow_hosts):
            try:
                self._allowed_nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._allowed_names.add(entry.lower().rstrip("."))
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._max_redirects = max_redirects
        self._resolve_host = resolver or _system_resolver
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout),
            follow_redirects=False,  # every hop is checked by hand
            trust_env=False,  # no proxy from the environment: it would resolve the name again, unchecked
            verify=verify,
            # No kept-alive connections: the pool is keyed by address, and a connection opened (and
            # certificate-checked) for one name must not carry a request for another name.
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # no cookies across fetches
            headers={"User-Agent": "opendance-media-fetcher", "Accept-Encoding": "identity"},
        )

    @classmethod
    def from_settings(cls, settings: Any, *, resolver: Resolver | None = None) -> SafeFetcher:
        s = settings
        return cls(
            s.allow_hosts,
            s.fetch_connect_timeout,
            s.fetch_read_timeout,
            s.fetch_total_timeout,
            s.fetch_max_redirects,
            resolver=resolver,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def check_url(self, url: str, *, param: str) -> None:
        """Refuse ``url`` unless it is http(s) and its host resolves only to reachable addresses."""
        parsed = self._parse(url, param, data_ok=False)
        await self._checked_addresses(parsed, param, noun="URLs", unresolved_code="invalid_url")

    async def fetch(self, url: str, *, param: str, max_bytes: int) -> bytes:
        """GET ``url`` (following checked redirects) and return at most ``max_bytes`` bytes."""
        sink = _Collect()
        await self.fetch_into(url, sink, param=param, max_bytes=max_bytes)
        return bytes(sink.data)

    async def fetch_into(self, url: str, sink: Sink, *, param: str, max_bytes: int) -> int:
        """GET ``url`` (following checked redirects) into ``sink``: at most ``max_bytes`` bytes,
        and how many there were. The total deadline includes the time the sink makes it wait."""
        where = [""]  # the host of the current hop, for the deadline message
        try:
            async with asyncio.timeout(self._total_timeout):
                return await self._fetch(url, param, max_bytes, where, sink)
        except TimeoutError:
            reason = f"the download from {where[0]} took longer than {self._total_timeout:g} s"
            raise _fetch_failed(param, reason) from None
        except _NetworkFailure as exc:
            raise _fetch_failed(param, str(exc)) from None

    async def post_json(self, url: str, payload: dict, *, timeout: float) -> int:
        """POST ``payload`` as JSON through the same checked connection; return the HTTP status.

        Redirects are not followed (their status is returned). A refused address, a timeout or a
        network failure raises ``ConnectionError``: a failed callback is not a request error.
        """
        try:
            async with asyncio.timeout(timeout):
                parsed = self._parse(url, "callback_url", data_ok=False)
                response = await self._open(parsed, "callback_url", "POST", noun="URLs", json=payload, timeout=timeout)
                await response.aclose()  # the body is not needed (and may be endless)
                return response.status_code
        except (MediaError, _NetworkFailure) as exc:
            raise ConnectionError(exc.message if isinstance(exc, MediaError) else f"callback_url: {exc}") from None
        except TimeoutError:
            raise ConnectionError(f"callback_url: no answer within {timeout:g} s") from None

    async def _fetch(self, url: str, param: str, max_bytes: int, where: list[str], sink: Sink) -> int:
        current = self._parse(url, param, data_ok=True)
        seen = {str(current)}
        while True:
            where[0] = current.host
            response = await self._open(current, param, "GET")
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    if len(seen) > self._max_redirects:
                        raise _fetch_failed(param, f"more than {self._max_redirects} redirects", "too_many_redirects")
                    try:
                        target = current.join(location)
                    except httpx.InvalidURL:
                        raise _fetch_failed(param, f"{current.host} redirected to an invalid URL") from None
                    if str(target) in seen:
                        raise _fetch_failed(param, f"redirect loop at {target.host}", "too_many_redirects")
                    if target.scheme not in ("http", "https"):  # data:, file: ... are for clients, not hosts
                        scheme = target.scheme[:20] or "(none)"
                        reason = f"{current.host} redirected to a {scheme}: URL; redirects must stay on http(s)"
                        raise _fetch_failed(param, reason, "unsupported_url_scheme")
                    try:
                        current = self._parse(target, param, data_ok=False)
                    except MediaError as exc:
                        raise _fetch_failed(param, f"{current.host} redirected to an invalid URL ({exc.message})") from None
                    seen.add(str(current))
                    continue
                if not 200 <= response.status_code < 300:
                    raise _fetch_failed(param, f"HTTP {response.status_code} from {current.host}")
                return await self._read_body(response, current.host, param, max_bytes, sink)
            finally:
                await response.aclose()

    async def _read_body(self, response: httpx.Response, host: str, param: str, max_bytes: int, sink: Sink) -> int:
        too_large = MediaError(f"{param} is larger than {format_size(max_bytes)}", param=param, code="media_too_large")
        declared = response.headers.get("content-length", "")
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        if declared.isdigit() and not encoded:
            if int(declared) > max_bytes:
                raise too_large
            await sink.expect(int(declared))
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:  # stop reading at the first byte past the cap
                    raise too_large
                await sink.write(chunk)
        except httpx.HTTPError as exc:
            raise self._network_failure(exc, host) from None
        return size

    def _parse(self, url: str | httpx.URL, param: str, *, data_ok: bool) -> httpx.URL:
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise MediaError(f"{param} is not a valid URL", param=param, code="invalid_url") from None
        if parsed.scheme not in ("http", "https"):
            scheme = parsed.scheme[:20] or "(none)"
            choices = "http://, https:// or a data: URI" if data_ok else "http:// or https://"
            message = f"{param}: the URL scheme {scheme!r} is not supported; use {choices}"
            raise MediaError(message, param=param, code="unsupported_url_scheme")
        if not parsed.raw_host:
            raise MediaError(f"{param} is not a valid URL: it has no host", param=param, code="invalid_url")
        if parsed.port is not None and not 0 < parsed.port <= 65535:  # httpx takes any number here
            message = f"{param} is not a valid URL: the port {parsed.port} is not 1-65535"
            raise MediaError(message, param=param, code="invalid_url")
        return parsed

    def _allowed(self, host: str, ip: IPAddress | None = None) -> bool:
        if ip is None:
            return host.lower().rstrip(".") in self._allowed_names
        return any(ip.version == net.version and ip in net for net in self._allowed_nets)

    async def _checked_addresses(
        self, url: httpx.URL, param: str, *, noun: str = "media URLs", unresolved_code: str = "media_fetch_failed"
    ) -> list[IPAddress]:
        """Resolve the URL's host once; refuse it if any address is not public (and not allowed)."""
        host = url.raw_host.decode("ascii")
        literal = parse_ip_literal(host)
        addresses: list[IPAddress] = [literal] if literal is not None else []
        if literal is None:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    raw = await self._resolve_host(host, url.port or (443 if url.scheme == "https" else 80))
                addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in raw))
            except TimeoutError:
                message = f"{param}: the host {host} did not resolve within {self._connect_timeout:g} s"
                raise MediaError(message, param=param, code=unresolved_code) from None
            except (OSError, ValueError):
                pass
            if not addresses:
                raise MediaError(f"{param}: the host {host} does not resolve", param=param, code=unresolved_code)
        if self._allowed(host):
            return addresses
        for ip in addresses:
            reason = address_refusal(ip)
            if reason is None or self._allowed(host, ip):
                continue
            article = "an" if reason[0] in "aeiou" else "a"
            shown = "" if str(ip) == host else f" ({ip})"
            message = f"{param}: the host {host} resolves to {article} {reason} address{shown}; {noun} must be public (or allow-listed with OPENDANCE_ALLOW_HOSTS)"
            raise MediaError(message, param=param, code="url_not_allowed")
        return addresses

    async def _open(self, url: httpx.URL, param: str, method: str, *, noun: str = "media URLs", **kwargs: Any) -> httpx.Response:
        """Send one request to a checked address of ``url``'s host; the response is streaming."""
        addresses = await self._checked_addresses(url, param, noun=noun)
        host = url.raw_host.decode("ascii")
        host_header = f"[{host}]" if ":" in host else host
        if url.port is not None:
            host_header += f":{url.port}"
        # TLS: SNI and the certificate check use the name, although the socket goes to the address.
        extensions = {"sni_hostname": host} if url.scheme == "https" and parse_ip_literal(host) is None else {}
        if (timeout := kwargs.pop("timeout", None)) is not None:
            kwargs["timeout"] = httpx.Timeout(timeout)
        failure: httpx.HTTPError | None = None
        for ip in addresses:  # every one was checked; try them in the resolver's order
            target = url.copy_with(host=str(ip))
            request = self._client.build_request(method, target, headers={"Host": host_header}, extensions=extensions, **kwargs)
            log.debug("%s %s://%s%s via %s", method, url.scheme, host_header, url.path, ip)
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = exc
            except httpx.HTTPError as exc:
                raise self._network_failure(exc, host) from None
            except httpx.InvalidURL as exc:  # httpx reads a redirect's Location even when not following it
                raise _NetworkFailure(f"{host} redirected to an invalid URL ({exc})") from None
        assert failure is not None
        raise self._network_failure(failure, host)

    def _network_failure(self, exc: httpx.HTTPError, host: str) -> _NetworkFailure:
        if isinstance(exc, httpx.ConnectTimeout):
            return _NetworkFailure(f"connecting to {host} timed out after {self._connect_timeout:g} s")
        if isinstance(exc, httpx.ReadTimeout):
            return _NetworkFailure(f"{host} sent nothing for {self._read_timeout:g} s")
        if isinstance(exc, httpx.TimeoutException):
            return _NetworkFailure(f"the connection to {host} timed out")
        if isinstance(exc, httpx.ConnectError):
            return _NetworkFailure(f"could not connect to {host} ({str(exc) or type(exc).__name__})")
        return _NetworkFailure(f"the connection to {host} failed ({type(exc).__name__}: {exc})")

"""Building the ``httpx.Request`` of a call without reparsing the base URL every time.

``httpx.AsyncClient.build_request`` parses the URL string three times
(base, merge, parameters), checking every character each time: on a cached
answer served in process that was a third of a whole call. The base URL of a
client never changes, so it is parsed once; a call's path (made of
identifiers the client validated) and its query (``urlencode``, as httpx does
it) are joined to it directly.

This leans on two httpx internals (``URL._uri_reference`` and
``httpx._urlparse.ParseResult``). They are checked at import, and each
request built here is compared with httpx's own in the test suite; anything
unusual (an httpx client given by the caller, cookies set by the server,
characters that would need quoting in the path, values that are not strings)
takes httpx's ordinary path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

__all__ = ["CookielessAsyncClient", "RequestBuilder"]

# Characters a path may hold as they are (identifiers, versions, slashes).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/_.\-]*")

try:
    from httpx._urlparse import ParseResult as _ParseResult

    def _url(parts: tuple[str, str, str, int | None, str, str | None]) -> httpx.URL:
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = _ParseResult(*parts, None)
        return url

    _probe = httpx.URL("https://example.test:8443/a/b?x=1&y=%C3%A9")
    _AVAILABLE = str(_url(("https", "", "example.test", 8443, "/a/b", "x=1&y=%C3%A9"))) == str(
        _probe
    ) and _probe == _url(("https", "", "example.test", 8443, "/a/b", "x=1&y=%C3%A9"))
except Exception:  # another httpx: its own path, always correct
    _AVAILABLE = False


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: answers' ``Set-Cookie`` headers are not stored."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing (and skip httpx's urllib round trip, paid on every answer)."""

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        """Keep nothing."""


class CookielessAsyncClient(httpx.AsyncClient):
    """The connection pool the client makes for itself: it keeps no cookies.

    API Entreprise authenticates each request by its token and sets no
    cookie. The pool is shared by ``with_options`` copies, which may carry
    other tokens: a cookie one answer set would travel with another token's
    calls. So none is kept.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        """Always empty."""
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        pass


_NO_COOKIES = _NoCookies()


class RequestBuilder:
    """Builds the GET requests of one client (shared by its ``with_options`` copies)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, *, plain: bool) -> None:
        self._http = http
        self._base_url = base_url
        self._plain = plain
        base = httpx.URL(base_url)
        parts: Any = getattr(base, "_uri_reference", None)
        # Only for a pool this library made: a caller's client may add parameters,
        # headers or hooks at build time that this path would skip.
        self.fast = bool(plain and _AVAILABLE and parts is not None and not base.query)
        if self.fast:
            self._scheme = parts.scheme
            self._userinfo = parts.userinfo
            self._host = parts.host
            self._port = parts.port
            self._prefix = parts.path.rstrip("/")
        self._defaults = {name.lower(): value for name, value in http.headers.items()}
        self._timeouts: dict[tuple[float | None, ...], dict[str, Any]] = {}

    def rebased(self, base_url: str) -> RequestBuilder:
        """This builder, or one for the same pool and another base URL."""
        if base_url == self._base_url:
            return self
        return RequestBuilder(self._http, base_url, plain=self._plain)

    def build(
        self,
        path: str,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
    ) -> httpx.Request:
        """The request for ``GET base_url + path?params`` with ``headers``."""
        if (
            not self.fast
            or not _PLAIN_PATH.fullmatch(path)
            or any(type(value) is not str for value in params.values())
            or len(self._http.cookies.jar)
        ):
            return self._http.build_request(
                "GET", self._base_url + path, params=params, headers=headers, timeout=timeout
            )
        merged = dict(self._defaults)
        for name, value in headers.items():
            merged[name.lower()] = value
        key = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        extension = self._timeouts.get(key)
        if extension is None:
            extension = timeout.as_dict()
            if len(self._timeouts) < 64:  # per-call timeouts are free-form: a small cache
                self._timeouts[key] = extension
        url = _url(
            (
                self._scheme,
                self._userinfo,
                self._host,
                self._port,
                self._prefix + path,
                urlencode(params) if params else None,
            )
        )
        return httpx.Request("GET", url, headers=merged, extensions={"timeout": extension})

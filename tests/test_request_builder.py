"""The client's own request building sends byte for byte what httpx's build_request would."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apientreprise_async import AsyncClient, NotFoundError
from apientreprise_async._request import RequestBuilder

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

TIMEOUT = httpx.Timeout(15.0, connect=5.0)
HEADERS = {"Authorization": "Bearer abc", "User-Agent": "ua/1", "Cache-Control": "no-cache"}
PARAMS: list[dict[str, Any]] = [
    {},
    {"recipient": RECIPIENT, "context": "Aides publiques", "object": "dossier 42/2024"},
    {"context": "Contrôle & suivi = 100 %", "object": "n°7+8 ; été", "recipient": RECIPIENT},
    {"object": "a\u00a0b\tc\n", "context": "😀", "recipient": "~-._*'()!"},
]
BASES = ["https://entreprise.api.gouv.fr", "http://127.0.0.1:8123/prefix/", "https://h.test:8443"]
PATHS = ["/v4/insee/sirene/unites_legales/418166096", "/v3/djepva/api-association/x_y.z"]


def _signature(request: httpx.Request) -> tuple[Any, ...]:
    return (
        request.method,
        str(request.url),
        request.url.raw_path,
        request.url.netloc,
        sorted((k.lower(), v) for k, v in request.headers.multi_items()),
        request.extensions.get("timeout"),
        request.read(),
    )


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("params", PARAMS)
def test_fast_requests_equal_httpx_build_request(base: str, params: dict[str, Any]) -> None:
    """Same URL, raw path, headers (httpx's defaults included), timeout and empty body."""
    http = httpx.AsyncClient()
    builder = RequestBuilder(http, base.rstrip("/"), plain=True)
    assert builder.fast
    for path in PATHS:
        ours = builder.build(path, params, HEADERS, TIMEOUT)
        theirs = http.build_request(
            "GET", base.rstrip("/") + path, params=params, headers=HEADERS, timeout=TIMEOUT
        )
        assert _signature(theirs) == _signature(ours)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v3/a b/c", {}),  # would need quoting
        ("/v3/é", {}),
        ("/v3/x", {"limit": 10, "flag": True}),  # httpx renders these its own way
    ],
)
def test_unusual_requests_take_httpx_path(path: str, params: dict[str, Any]) -> None:
    """Anything the fast path does not handle is left to httpx, with the same result."""
    http = httpx.AsyncClient()
    builder = RequestBuilder(http, "https://h.test", plain=True)
    theirs = http.build_request("GET", "https://h.test" + path, params=params, timeout=TIMEOUT)
    assert _signature(theirs) == _signature(builder.build(path, params, {}, TIMEOUT))


def test_a_callers_client_and_cookies_keep_httpx_path() -> None:
    """A caller's httpx client (its params, headers, hooks) and cookies go through build_request."""
    http = httpx.AsyncClient(headers={"X-Team": "t"}, params={"always": "1"})
    mine = RequestBuilder(http, "https://h.test", plain=False)
    assert not mine.fast
    request = mine.build("/v3/x", {"context": "c"}, {}, TIMEOUT)
    assert ("1", "t") == (request.url.params["always"], request.headers["x-team"])
    ours = httpx.AsyncClient()
    builder = RequestBuilder(ours, "https://h.test", plain=True)
    ours.cookies.set("sticky", "node-2", domain="h.test")
    assert "sticky=node-2" == builder.build("/v3/x", {}, {}, TIMEOUT).headers["cookie"]


async def test_a_call_sends_what_httpx_would() -> None:
    """End to end: the request a typed call sends, compared with httpx's own building."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"errors": []})

    async with AsyncClient(
        TOKEN,
        transport=httpx.MockTransport(handle),
        recipient=RECIPIENT,
        context="Contrôle & suivi",
        object="dossier 7",
        check_maintenance=False,
    ) as client:
        with pytest.raises(NotFoundError):
            await client.insee.unites_legales("418166096")
        expected = client._http.build_request(
            "GET",
            "https://entreprise.api.gouv.fr/v4/insee/sirene/unites_legales/418166096",
            params={"recipient": RECIPIENT, "context": "Contrôle & suivi", "object": "dossier 7"},
            headers=dict(seen[0].headers),
        )
    assert str(expected.url) == str(seen[0].url)
    assert sorted(expected.headers.multi_items()) == sorted(seen[0].headers.multi_items())


async def test_with_options_on_another_base_url_sends_there() -> None:
    """A copy on another base URL builds its requests on that URL, the original on its own."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(404, json={"errors": []})

    async with AsyncClient(
        TOKEN,
        transport=httpx.MockTransport(handle),
        recipient=RECIPIENT,
        context="c",
        object="o",
        check_maintenance=False,
    ) as client:
        other = client.with_options(base_url="https://ailleurs.test")
        for target in (other, client):
            with pytest.raises(NotFoundError):
                await target.insee.unites_legales("418166096")
    assert ["ailleurs.test", "entreprise.api.gouv.fr"] == seen


async def test_the_clients_own_pool_keeps_no_cookie_between_tokens() -> None:
    """A Set-Cookie answered to one token's call never travels with another token's call."""
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(
            404, json={"errors": []}, headers={"Set-Cookie": "session=a1; Path=/"}
        )

    async with AsyncClient(
        TOKEN,
        transport=httpx.MockTransport(handle),
        recipient=RECIPIENT,
        context="c",
        object="o",
        check_maintenance=False,
    ) as client:
        other = client.with_options(token=TOKEN + "x")
        for target in (client, other, client):
            with pytest.raises(NotFoundError):
                await target.insee.unites_legales("418166096")
        assert 0 == len(client._http.cookies.jar)
    assert [None, None, None] == seen

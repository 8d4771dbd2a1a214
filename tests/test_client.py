"""AsyncClient core: configuration, validation before I/O, envelope, logging, token hygiene."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from apientreprise_async import (
    AsyncClient,
    AuthenticationError,
    BearerToken,
    InvalidSirenError,
    InvalidSiretError,
    MissingParameterError,
    NotFoundError,
    Timeouts,
    TokenExpiredError,
    TokenExpiryWarning,
    TransportError,
    UnexpectedPayloadError,
    UnknownOperationError,
)
from apientreprise_async._auth import TokenInfo

from .conftest import RECIPIENT, TOKEN, make_jwt

pytestmark = pytest.mark.anyio

SIREN = "418166096"
UL_PATH = f"/v4/insee/sirene/unites_legales/{SIREN}"


class Recorder:
    """A transport that records requests and answers with a scripted handler."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda r: ok({"id": 1}))

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.handler(request)

        return httpx.MockTransport(handle)


def ok(data: Any, **extra: Any) -> httpx.Response:
    headers = {
        "RateLimit-Limit": "250",
        "RateLimit-Remaining": "249",
        "RateLimit-Reset": "1900000000",
        "X-Request-ID": "req-123",
    }
    return httpx.Response(200, json={"data": data, **extra}, headers=headers)


def client_for(rec: Recorder, **kw: Any) -> AsyncClient:
    kw.setdefault("token", TOKEN)
    kw.setdefault("recipient", RECIPIENT)
    kw.setdefault("context", "tests")
    kw.setdefault("object", "case-1")
    kw.setdefault("strict", True)
    return AsyncClient(transport=rec.transport(), **kw)


async def test_happy_path_envelope_and_headers() -> None:
    """A 200 fills data/links/meta/raw/status/headers/rate_limit/request_id."""
    rec = Recorder(lambda r: ok({"siren": SIREN}, links={"self": "x"}, meta={"a": 1}))
    async with client_for(rec) as client:
        response = await client.get(f"/v4/insee/sirene/unites_legales/{SIREN}")
    assert {"siren": SIREN} == response.data
    assert {"self": "x"} == response.links
    assert {"a": 1} == response.meta
    assert response.raw["data"] == {"siren": SIREN}
    assert 200 == response.http_status
    assert response.headers["ratelimit-limit"] == response.headers["RATELIMIT-LIMIT"] == "250"
    assert response.rate_limit is not None
    assert (250, 249) == (response.rate_limit.limit, response.rate_limit.remaining)
    assert response.rate_limit.reset_at.year == 2030
    assert "req-123" == response.request_id
    sent = rec.requests[0]
    assert sent.url.path == f"/v4/insee/sirene/unites_legales/{SIREN}"
    assert sent.url.params["recipient"] == RECIPIENT
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(sent.url)
    assert sent.headers["user-agent"].startswith("api-entreprise-python/")


async def test_missing_links_and_meta_are_empty_mappings() -> None:
    """meta and links are surfaced as {} when the server omits them."""
    async with client_for(Recorder(lambda r: ok([1, 2]))) as client:
        response = await client.get(UL_PATH)
    assert {} == response.meta
    assert {} == response.links
    assert [1, 2] == response.data


@pytest.mark.parametrize(
    ("body", "raw"),
    [(b"not json", "not json"), (b"[1, 2]", [1, 2]), (b'"text"', "text")],
    ids=["not-json", "array", "string"],
)
async def test_a_2xx_body_that_is_not_an_object_raises_with_what_was_received(
    body: bytes, raw: Any
) -> None:
    """A TransportError (DINUM) that is also an UnexpectedPayloadError carrying the answer."""
    answer = httpx.Response(200, content=body, headers={"X-Request-ID": "req-9"})
    async with client_for(Recorder(lambda r: answer), strict=False) as client:
        with pytest.raises(TransportError) as info:
            await client.get(UL_PATH)
    assert info.value.url.endswith("object=case-1")
    assert isinstance(info.value, UnexpectedPayloadError)
    received = info.value.response
    assert received is not None
    assert (raw, 200, "req-9") == (received.raw, received.http_status, received.request_id)
    assert info.value.http_status is None  # no usable answer, as for every TransportError


async def test_per_call_overrides_win_and_none_params_are_dropped() -> None:
    """Per-call traceability beats the client default; None query values vanish."""
    rec = Recorder()
    async with client_for(rec) as client:
        await client.get(
            "/v3/ademe/etablissements/41816609600051/certification_rge",
            params={"context": "other", "limit": None},
        )
    params = rec.requests[0].url.params
    assert "other" == params["context"]
    assert "limit" not in params


@pytest.mark.parametrize(
    ("kwargs", "call", "error", "parameter"),
    [
        ({"recipient": None}, {}, MissingParameterError, "recipient"),
        ({"context": None}, {}, MissingParameterError, "context"),
        ({"object": None}, {}, MissingParameterError, "object"),
        ({"recipient": "13002526500014"}, {}, InvalidSiretError, "recipient"),
        ({}, {"object": "x" * 51}, ValueError, None),
        ({}, {"siren": "418166097"}, InvalidSirenError, "siren"),
        ({}, {"siren": "12"}, InvalidSirenError, "siren"),
    ],
)
async def test_local_errors_send_nothing(
    kwargs: dict[str, Any], call: dict[str, Any], error: type[Exception], parameter: str | None
) -> None:
    """Every local refusal names its parameter and no request reaches the transport."""
    rec = Recorder()
    async with client_for(rec, **kwargs) as client:
        args = {"siren": SIREN, **call}
        with pytest.raises(error) as info:
            await client.call("api_entreprise_v4_insee_unites_legales", **args)
    assert [] == rec.requests
    if parameter:
        assert parameter == info.value.parameter  # type: ignore[attr-defined]
        assert parameter in str(info.value)


async def test_unknown_operation_and_parameter() -> None:
    """Unknown ids and parameters are refused locally."""
    rec = Recorder()
    async with client_for(rec) as client:
        with pytest.raises(UnknownOperationError):
            await client.call("api_entreprise_v9_nothing", siren=SIREN)
        with pytest.raises(ValueError, match="bogus"):
            await client.call("api_entreprise_v4_insee_unites_legales", siren=SIREN, bogus=1)
        with pytest.raises(ValueError, match="siren"):
            await client.call("api_entreprise_v4_insee_unites_legales")
    assert [] == rec.requests


async def test_get_escape_hatch_validates_catalogue_paths() -> None:
    """client.get applies the same validation to a catalogue path."""
    rec = Recorder()
    async with client_for(rec) as client:
        with pytest.raises(InvalidSirenError):
            await client.get("/v4/insee/sirene/unites_legales/418166097")
        await client.get(UL_PATH, params={"context": "via get"})
    assert rec.requests[0].url.params["context"] == "via get"


async def test_a_failing_auth_strategy_is_an_authentication_error() -> None:
    """A strategy that raises becomes AuthenticationError, without a request."""

    class Broken:
        fingerprint = "broken"
        token_info = None

        def auth_headers(self) -> dict[str, str]:
            raise RuntimeError("vault unreachable")

    rec = Recorder()
    async with client_for(rec, token=None, auth=Broken()) as client:
        with pytest.raises(AuthenticationError):
            await client.get(UL_PATH)
    assert [] == rec.requests


async def test_expired_token_is_never_sent() -> None:
    """A token past its exp claim is refused locally."""
    rec = Recorder()
    async with client_for(rec, token=make_jwt(exp_in_days=-1)) as client:
        with pytest.raises(TokenExpiredError):
            await client.get(UL_PATH)
    assert [] == rec.requests


@pytest.mark.parametrize(("days", "threshold"), [(80, "80"), (20, "20"), (3, "3")])
def test_expiry_warnings(days: int, threshold: str) -> None:
    """A token close to expiry warns once, naming the days left."""
    token = make_jwt({"jti": f"w{days}"}, exp_in_days=days + 0.5)
    with pytest.warns(TokenExpiryWarning, match=f"in {threshold} days"):
        AsyncClient(token=token, transport=httpx.MockTransport(lambda r: ok(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AsyncClient(token=token, transport=httpx.MockTransport(lambda r: ok(1)))


def test_token_info_from_jwt() -> None:
    """token_info decodes the payload without verifying it."""
    client = AsyncClient(token=TOKEN, transport=httpx.MockTransport(lambda r: ok(1)))
    info = client.token_info
    assert info is not None
    assert "tests" == info.subject
    assert ("unites_legales_etablissements_insee",) == info.scopes
    assert not info.is_expired()
    assert TokenInfo.from_jwt("not-a-jwt") is None
    assert TokenInfo.from_jwt("a.!!!.c") is None


def test_configuration_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit argument > environment > default, per field."""
    monkeypatch.delenv("API_ENTREPRISE_BASE_URL", raising=False)
    monkeypatch.delenv("API_ENTREPRISE_ENV", raising=False)
    monkeypatch.setenv("API_ENTREPRISE_TOKEN", TOKEN)
    default = AsyncClient()
    assert "https://entreprise.api.gouv.fr" == default.settings.base_url
    monkeypatch.setenv("API_ENTREPRISE_ENV", "staging")
    staging = AsyncClient()
    assert "https://staging.entreprise.api.gouv.fr" == staging.settings.base_url
    assert "production" == AsyncClient(environment="production").settings.environment
    monkeypatch.setenv("API_ENTREPRISE_BASE_URL", "http://127.0.0.1:9/")
    assert "http://127.0.0.1:9" == AsyncClient().settings.base_url
    assert "https://x.test" == AsyncClient(base_url="https://x.test").settings.base_url
    monkeypatch.delenv("API_ENTREPRISE_TOKEN")
    with pytest.raises(ValueError, match="token"):
        AsyncClient()
    monkeypatch.delenv("API_ENTREPRISE_BASE_URL")
    with pytest.raises(ValueError, match="environment"):
        AsyncClient(token=TOKEN, environment="moon")


async def test_traceability_from_the_environment_like_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """API_ENTREPRISE_RECIPIENT/_CONTEXT/_OBJECT are the defaults; arguments still win."""
    monkeypatch.setenv("API_ENTREPRISE_RECIPIENT", RECIPIENT)
    monkeypatch.setenv("API_ENTREPRISE_CONTEXT", "from-env")
    monkeypatch.setenv("API_ENTREPRISE_OBJECT", "env-object")
    rec = Recorder(lambda r: ok({"siren": SIREN}))
    async with AsyncClient(TOKEN, transport=rec.transport()) as client:
        await client.get(UL_PATH)
    async with AsyncClient(TOKEN, transport=rec.transport(), object="mine") as client:
        await client.get(UL_PATH)
    first, second = (dict(r.url.params) for r in rec.requests)
    assert {"recipient": RECIPIENT, "context": "from-env", "object": "env-object"} == first
    assert "mine" == second["object"]
    monkeypatch.setenv("API_ENTREPRISE_RECIPIENT", "")  # empty is unset, as in the CLI
    assert AsyncClient(TOKEN).settings.recipient is None


def test_tls_verification_cannot_be_disabled() -> None:
    """verify=False is refused; a CA bundle path would be accepted."""
    with pytest.raises(ValueError, match="TLS"):
        AsyncClient(token=TOKEN, verify=False)


async def test_with_options_is_a_new_client_sharing_the_pool() -> None:
    """with_options leaves the original unchanged and shares pool and governor."""
    rec = Recorder()
    async with client_for(rec, timeouts=Timeouts(json=3)) as client:
        other = client.with_options(context="second", max_wait=1.0)
        assert "tests" == client.settings.context
        assert "second" == other.settings.context
        assert 3 == other.settings.timeouts.json
        assert other.governor is client.governor
        await other.get(UL_PATH)
        await other.aclose()
        await client.get(UL_PATH)  # the shared pool is still open
    assert ["second", "tests"] == [r.url.params["context"] for r in rec.requests]
    with pytest.raises(AttributeError):
        client.settings.context = "x"  # type: ignore[misc]


async def test_closed_client_refuses_calls() -> None:
    """A closed client cannot be reused."""
    client = client_for(Recorder())
    async with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(UL_PATH)
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass


async def test_caller_owned_http_client_is_not_closed() -> None:
    """http_client= is used as is and left open."""
    rec = Recorder()
    http = httpx.AsyncClient(transport=rec.transport())
    async with AsyncClient(
        token=TOKEN, http_client=http, recipient=RECIPIENT, context="c", object="o"
    ) as client:
        await client.get(UL_PATH)
    assert not http.is_closed
    await http.aclose()


async def test_fresh_sends_no_cache() -> None:
    """fresh=True asks the server to bypass its cache."""
    rec = Recorder(lambda r: httpx.Response(404, json={"errors": []}))
    async with client_for(rec) as client:
        with pytest.raises(NotFoundError):
            await client.call("api_entreprise_v4_insee_unites_legales", siren=SIREN, fresh=True)
    assert "no-cache" == rec.requests[0].headers["cache-control"]


async def test_the_token_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    """repr, logs, exception messages and URLs never contain the token."""
    caplog.set_level(logging.DEBUG, logger="apientreprise_async")
    answers = iter(
        [ok(1), httpx.Response(401, json={"errors": [{"code": "00101", "title": "Interdit"}]})]
    )
    rec = Recorder(lambda r: next(answers))
    texts: list[str] = []
    async with client_for(rec) as client:
        texts.append(repr(client))
        texts.append(repr(BearerToken(TOKEN)))
        await client.get(UL_PATH)
        with pytest.raises(AuthenticationError) as info:
            await client.get(UL_PATH)
        texts += [str(info.value), repr(info.value), info.value.url]
        with pytest.raises(InvalidSirenError) as bad:
            await client.get("/v4/insee/sirene/unites_legales/1")
        texts.append(str(bad.value))
    texts += [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    assert len(caplog.records) >= 2
    secret_part = TOKEN.split(".")[2]
    for text in texts:
        assert TOKEN not in text
        assert secret_part not in text


async def test_one_log_record_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """The request log carries method, path, query, status, duration, remaining, request id."""
    caplog.set_level(logging.DEBUG, logger="apientreprise_async")
    async with client_for(Recorder()) as client:
        await client.get(UL_PATH)
    (record,) = [r for r in caplog.records if hasattr(r, "http_status")]
    assert "GET" == record.method
    assert UL_PATH == record.path
    assert "recipient=13002526500013" in record.query
    assert 200 == record.http_status
    assert 249 == record.rate_limit_remaining
    assert "req-123" == record.request_id
    assert record.duration_ms >= 0


async def test_timeout_is_a_transport_error_with_cause() -> None:
    """A read timeout becomes TransportError with method, url and the cause chained."""

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with client_for(Recorder(slow)) as client:
        with pytest.raises(TransportError) as info:
            await client.get(UL_PATH)
    assert "GET" == info.value.method
    assert UL_PATH in info.value.url
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.http_status is None


async def test_timeout_classes() -> None:
    """JSON and document operations get their own read timeouts, overridable per call."""
    seen: list[float] = []

    def grab(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(404, json={"errors": []})

    timeouts = Timeouts(json=4, document=11)
    async with client_for(Recorder(grab), timeouts=timeouts, check_maintenance=False) as client:
        for op, extra in [
            ("api_entreprise_v4_insee_unites_legales", {}),
            ("api_entreprise_v4_dgfip_attestations_fiscales", {}),
            ("api_entreprise_v4_insee_unites_legales", {"timeout": 2}),
        ]:
            with pytest.raises(NotFoundError):
                await client.call(op, siren=SIREN, **extra)
    assert [4, 11, 2] == seen

"""The DINUM client specification, section by section (``../shared/reference/dinum-client-specs.md``).

Each test is named after the section whose MUST or SHOULD it checks (``test_s7_2_...`` for
§7.2), so a reviewer can read the coverage from the list of names. Where this library departs
from the specification on purpose, the test checks the documented behaviour and says so; the
departures and their reasons are in the README ("Departures from the DINUM client
specification").
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import pytest

import apientreprise_async
from apientreprise_async import (
    ApiEntrepriseError,
    ApiError,
    AsyncClient,
    AuthenticationError,
    AuthorizationError,
    BearerToken,
    ClientError,
    ConflictError,
    InvalidSiretError,
    MissingParameterError,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    RateLimit,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Timeouts,
    TransportError,
    ValidationError,
    is_valid_siret,
)
from apientreprise_async._response import parse_rate_limit

from .conftest import RECIPIENT, ROOT, TOKEN

pytestmark = pytest.mark.anyio

SIREN = "418166096"
SIRET = "41816609600051"
PATH = f"/v4/insee/sirene/unites_legales/{SIREN}"
UA_FORMAT = re.compile(
    r"\Aapi-entreprise-python/\d+\.\d+\.\d+ \(\+https://github\.com/datagouv/apistration\)\Z"
)


class Wire:
    """An HTTP layer stub: records every request, answers with ``answer(request)``."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or (lambda request: envelope({"siren": SIREN}))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def envelope(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None, **rest: Any
) -> httpx.Response:
    return httpx.Response(status, json={"data": data, **rest}, headers=headers or {})


def failure(
    status: int, *items: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json={"errors": list(items)}, headers=headers or {})


def client(wire: Wire, **kw: Any) -> AsyncClient:
    kw.setdefault("token", TOKEN)
    kw.setdefault("recipient", RECIPIENT)
    kw.setdefault("context", "Aide X")
    kw.setdefault("object", "Dossier 42")
    kw.setdefault("retry", None)
    return AsyncClient(transport=wire.transport(), **kw)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("API_ENTREPRISE_TOKEN", "API_ENTREPRISE_ENV", "API_ENTREPRISE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- §2 Environments ---------------------------------------------------------------------


def test_s2_production_is_the_default_environment(no_env: pytest.MonkeyPatch) -> None:
    settings = AsyncClient(token=TOKEN).settings
    assert ("production", "https://entreprise.api.gouv.fr") == (
        settings.environment,
        settings.base_url,
    )


def test_s2_staging_is_one_parameter(no_env: pytest.MonkeyPatch) -> None:
    settings = AsyncClient(token=TOKEN, environment="staging").settings
    assert ("staging", "https://staging.entreprise.api.gouv.fr") == (
        settings.environment,
        settings.base_url,
    )


async def test_s2_base_url_override_is_where_requests_go(no_env: pytest.MonkeyPatch) -> None:
    wire = Wire()
    # https: plain http is refused for any host but loopback (the token would travel in clear).
    async with client(wire, base_url="https://gateway.test:8080/") as c:
        await c.get(PATH)
    assert f"https://gateway.test:8080{PATH}" == str(wire.requests[0].url).split("?")[0]


async def test_s2_departure_plain_http_base_url_only_on_loopback(
    no_env: pytest.MonkeyPatch,
) -> None:
    """Departure (README): a local mock server may be plain http; a remote one must be https."""
    wire = Wire()
    async with client(wire, base_url="http://127.0.0.1:8080") as c:
        await c.get(PATH)
    assert "http://127.0.0.1:8080" == str(wire.requests[0].url).split("/v4/")[0]
    with pytest.raises(ValueError, match="https"):
        AsyncClient(token=TOKEN, base_url="http://gateway.test")


def test_s2_unknown_environment_is_an_argument_error(no_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="environment"):
        AsyncClient(token=TOKEN, environment="dev")


# -- §3 Authentication ---------------------------------------------------------------------


async def test_s3_bearer_token_header_on_every_request() -> None:
    wire = Wire()
    async with client(wire) as c:
        await c.get(PATH)
        await c.get(f"/v3/insee/sirene/etablissements/{SIRET}/successions")
    assert [f"Bearer {TOKEN}"] * 2 == [r.headers["authorization"] for r in wire.requests]


def test_s3_1_bearer_token_emits_the_expected_header() -> None:
    assert {"Authorization": "Bearer abc.def.ghi"} == dict(
        BearerToken("abc.def.ghi").auth_headers()
    )


def test_s3_1_bearer_token_rejects_an_empty_token() -> None:
    with pytest.raises(ValueError, match="token"):
        BearerToken("")
    with pytest.raises(ValueError, match="token"):
        BearerToken("   ")


@pytest.mark.parametrize("token", [None, 12345, b"abc.def.ghi"], ids=["none", "int", "bytes"])
def test_s3_1_bearer_token_rejects_what_is_not_a_string(token: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="token"):
        BearerToken(token)


async def test_s3_1_a_new_strategy_plugs_in_without_touching_the_transport() -> None:
    """The transport reads headers from the strategy on every request, never a raw token."""

    class Rotating:
        fingerprint = "rotating-strategy"
        token_info = None

        def __init__(self) -> None:
            self.turn = 0

        def auth_headers(self) -> dict[str, str]:
            self.turn += 1
            return {"Authorization": f"Bearer token-{self.turn}"}

    wire = Wire()
    async with client(wire, token=None, auth=Rotating()) as c:
        await c.get(PATH)
        await c.get(PATH, params={"object": "second"})
    assert ["Bearer token-1", "Bearer token-2"] == [
        r.headers["authorization"] for r in wire.requests
    ]


async def test_s3_1_a_failing_strategy_is_an_authentication_error_without_http() -> None:
    class Vault:
        fingerprint = "vault"
        token_info = None

        def auth_headers(self) -> dict[str, str]:
            raise RuntimeError("vault sealed")

    wire = Wire()
    async with client(wire, token=None, auth=Vault()) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.get(PATH)
    assert [] == wire.requests
    # Departure (README): the strategy's own message is chained, not repeated.
    assert "vault sealed" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "vault sealed" == str(info.value.__cause__)


async def test_s3_1_token_argument_is_sugar_for_bearer_token() -> None:
    wire = Wire()
    async with client(wire, token=None, auth=BearerToken(TOKEN)) as via_strategy:
        await via_strategy.get(PATH)
    async with client(wire, token=TOKEN) as via_sugar:
        await via_sugar.get(PATH)
    first, second = wire.requests
    assert first.headers["authorization"] == second.headers["authorization"]
    assert via_strategy.token_fingerprint == via_sugar.token_fingerprint


async def test_s3_2_scopes_are_not_checked_locally() -> None:
    """A token whose scopes do not name the endpoint is still sent: scopes mask data server-side."""
    wire = Wire()
    async with client(wire) as c:  # TOKEN's only scope is unites_legales_etablissements_insee
        await c.get(f"/v4/dgfip/unites_legales/{SIREN}/attestation_fiscale")
    assert 1 == len(wire.requests)


# -- §4 Cross-cutting parameters -------------------------------------------------------------


async def test_s4_client_defaults_are_sent() -> None:
    wire = Wire()
    async with client(wire) as c:
        await c.get(PATH)
    params = wire.requests[0].url.params
    assert (RECIPIENT, "Aide X", "Dossier 42") == (
        params["recipient"],
        params["context"],
        params["object"],
    )


async def test_s4_per_call_keywords_override_the_defaults() -> None:
    wire = Wire(lambda r: envelope({}))
    async with client(wire) as c:
        await c.get(PATH, params={"context": "Autre aide"})
        await c.get(
            f"/v3/insee/sirene/etablissements/{SIRET}/successions", params={"object": "D-7"}
        )
    assert "Autre aide" == wire.requests[0].url.params["context"]
    assert ("Aide X", "D-7") == (
        wire.requests[1].url.params["context"],
        wire.requests[1].url.params["object"],
    )


@pytest.mark.parametrize("missing", ["recipient", "context", "object"])
async def test_s4_missing_required_parameter_fails_before_any_http_call(missing: str) -> None:
    wire = Wire()
    async with client(wire, **{missing: None}) as c:
        with pytest.raises(MissingParameterError, match=missing):
            await c.get(PATH)
    assert [] == wire.requests


async def test_s4_recipient_is_validated_as_a_siret_before_any_http_call() -> None:
    wire = Wire()
    async with client(wire) as c:
        with pytest.raises(InvalidSiretError, match="recipient"):
            await c.get(PATH, params={"recipient": "13002526500014"})
    async with client(wire, recipient="nope") as c:
        with pytest.raises(InvalidSiretError, match="recipient"):
            await c.get(PATH)
    assert [] == wire.requests


# -- §4.1 SIRET validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["13002526500013", "41816609600051", "35600000000001", "35600000012345"]
)
def test_s4_1_valid_sirets(value: str) -> None:
    assert is_valid_siret(value)


@pytest.mark.parametrize(
    "value",
    ["13002526500014", "1300252650001", "130025265000133", "1300252650001A", "", None],
    ids=["luhn", "13-digits", "15-digits", "letter", "empty", "none"],
)
def test_s4_1_invalid_sirets(value: str | None) -> None:
    assert not is_valid_siret(value)


def test_s4_1_la_poste_sirets_skip_luhn() -> None:
    assert is_valid_siret("35600000000002")
    assert not is_valid_siret("35600000100002")  # not La Poste: Luhn applies and fails


FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@pytest.mark.parametrize("digits", [FULLWIDTH, ARABIC_INDIC], ids=["fullwidth", "arabic-indic"])
async def test_s4_1_only_ascii_digits_make_a_siret(digits: dict[int, str]) -> None:
    """§4.1's pattern is ``\\d{14}`` over ASCII: other Unicode digits are refused, never sent."""
    assert not is_valid_siret(RECIPIENT.translate(digits))
    wire = Wire()
    async with client(wire) as c:
        with pytest.raises(InvalidSiretError, match="recipient"):
            await c.get(PATH, params={"recipient": RECIPIENT.translate(digits)})
        with pytest.raises(InvalidSiretError, match="siret"):
            await c.insee.successions(SIRET.translate(digits))
    assert [] == wire.requests


def test_s4_1_invalid_siret_error_is_the_native_argument_error() -> None:
    assert issubclass(InvalidSiretError, ValueError)


async def test_s4_1_the_message_names_the_offending_parameter() -> None:
    wire = Wire()
    async with client(wire) as c:
        with pytest.raises(InvalidSiretError, match="siret") as path_error:
            await c.get("/v3/insee/sirene/etablissements/41816609600052/successions")
        with pytest.raises(InvalidSiretError, match="recipient") as recipient_error:
            await c.get(PATH, params={"recipient": "41816609600052"})
    assert "siret" == path_error.value.parameter
    assert "recipient" == recipient_error.value.parameter
    assert [] == wire.requests


# -- §5 Success envelope ------------------------------------------------------------------


async def test_s5_response_exposes_every_required_field() -> None:
    headers = {
        "RateLimit-Limit": "250",
        "RateLimit-Remaining": "249",
        "RateLimit-Reset": "1900000000",
    }
    wire = Wire(
        lambda r: envelope(
            {"siren": SIREN}, headers=headers, links={"next": "/n"}, meta={"provider": "INSEE"}
        )
    )
    async with client(wire) as c:
        r = await c.get(PATH)
    assert {"siren": SIREN} == r.data
    assert {"next": "/n"} == r.links
    assert {"provider": "INSEE"} == r.meta
    assert {
        "data": {"siren": SIREN},
        "links": {"next": "/n"},
        "meta": {"provider": "INSEE"},
    } == r.raw
    assert 200 == r.http_status
    assert (
        "250"
        == r.headers["RateLimit-Limit"]
        == r.headers["ratelimit-limit"]
        == r.headers["RATELIMIT-LIMIT"]
    )
    assert RateLimit(250, 249, 1900000000.0) == r.rate_limit


async def test_s5_meta_and_links_are_empty_mappings_never_none() -> None:
    wire = Wire(lambda r: envelope({"siren": SIREN}))
    async with client(wire) as c:
        r = await c.get(PATH)
    assert ({}, {}) == (r.meta, r.links)


async def test_s5_empty_meta_is_surfaced_verbatim() -> None:
    wire = Wire(lambda r: envelope({}, meta={}, links={}))
    async with client(wire) as c:
        r = await c.get(PATH)
    assert {} == r.meta
    assert {} == r.raw["meta"]


async def test_s5_a_200_that_does_not_fit_its_record_is_still_answered() -> None:
    """The reference client returns whatever the 200 carried; so does a typed method here."""
    wire = Wire(lambda r: envelope({"siren": SIREN, "surprise": 1}, links={}, meta={"m": 1}))
    async with client(wire) as c:
        r = await c.insee.unites_legales(SIREN)
    assert 200 == r.http_status
    assert {"siren": SIREN, "surprise": 1} == r.raw["data"]
    assert {"m": 1} == r.meta
    assert SIREN == r.data.siren
    assert r.problems  # what did not fit is named, not lost


def test_s5_response_is_a_value_object() -> None:
    assert attrs.has(apientreprise_async.Response)
    fields = [f.name for f in attrs.fields(apientreprise_async.Response)]
    assert fields[:7] == ["data", "links", "meta", "raw", "http_status", "headers", "rate_limit"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        apientreprise_async.Response({}, {}, {}, {}, 200, httpx.Headers(), None).data = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "body", [b"not-json", b"[1, 2]", b"null"], ids=["not-json", "array", "null"]
)
async def test_s5_a_2xx_body_that_is_not_an_object_is_a_transport_error(body: bytes) -> None:
    wire = Wire(lambda r: httpx.Response(200, content=body))
    async with client(wire) as c:
        with pytest.raises(TransportError) as info:
            await c.get(PATH)
    assert ("GET", None) == (info.value.method, info.value.http_status)
    assert PATH in info.value.url


# -- §6 Errors ----------------------------------------------------------------------------

MATRIX = [
    (401, "00101", AuthenticationError),
    (401, "00103", AuthenticationError),
    (401, "00105", AuthenticationError),
    (403, "00100", AuthorizationError),
    (404, "04040", NotFoundError),
    (409, "00015", ConflictError),
    (422, "00201", ValidationError),
    (422, "00301", ValidationError),
    (429, "00429", RateLimitError),
    (502, "04001", ProviderError),
    (503, "05000", ProviderUnavailableError),
    (504, "04002", ProviderUnavailableError),
    (418, "any", ClientError),
    (500, "any", ServerError),
    (599, "any", ServerError),
]


@pytest.mark.parametrize(("status", "code", "cls"), MATRIX, ids=[f"{s}-{c}" for s, c, _ in MATRIX])
async def test_s6_2_mapping_rule_and_fields(status: int, code: str, cls: type[ApiError]) -> None:
    item = {"code": code, "title": "t", "detail": "d", "source": {"parameter": "siren"}}
    wire = Wire(lambda r: failure(status, item))
    async with client(wire) as c:
        with pytest.raises(cls) as info:
            await c.get(PATH)
    error = info.value
    assert type(error) is cls
    assert (status, code, "t", "d") == (
        error.http_status,
        error.errors[0]["code"],
        error.first_error_title,
        error.first_error_detail,
    )
    assert {"parameter": "siren"} == error.first_error_source
    assert "GET" == error.method
    assert error.url.startswith(f"https://entreprise.api.gouv.fr{PATH}?")
    assert 1 == len(wire.requests)  # §7.2: never retried by default


async def test_s6_2_network_failure_is_a_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with client(Wire(refuse)) as c:
        with pytest.raises(TransportError) as info:
            await c.get(PATH)
    assert (None, [], "GET") == (info.value.http_status, info.value.errors, info.value.method)
    assert PATH in info.value.url


def test_s6_1_exception_hierarchy() -> None:
    for cls in (
        AuthenticationError,
        AuthorizationError,
        NotFoundError,
        ConflictError,
        ValidationError,
        RateLimitError,
    ):
        assert issubclass(cls, ClientError)
    for cls in (ProviderError, ProviderUnavailableError):
        assert issubclass(cls, ServerError)
    for cls in (ClientError, ServerError, TransportError):
        assert issubclass(cls, ApiEntrepriseError)


async def test_s6_provider_meta_is_surfaced_verbatim() -> None:
    item = {
        "code": "04001",
        "title": "t",
        "detail": "d",
        "meta": {"provider": "INSEE", "retry_in": 10},
    }
    async with client(Wire(lambda r: failure(502, item))) as c:
        with pytest.raises(ProviderError) as info:
            await c.get(PATH)
    assert "INSEE" == info.value.provider
    assert {"provider": "INSEE", "retry_in": 10} == info.value.first_error_meta
    assert 10 == info.value.errors[0]["meta"]["retry_in"]  # the unit (seconds) kept as sent
    assert 10.0 == info.value.retry_in == info.value.retry_after


def test_s6_retry_after_on_rate_limit_and_provider_errors() -> None:
    assert 12 == RateLimitError(http_status=429, retry_after=12).retry_after
    assert 300 == ProviderError(http_status=502, retry_after=300).retry_after
    assert ProviderError(http_status=502).retry_after is None


async def test_s6_an_error_without_a_code_keeps_its_title_and_detail_in_the_message() -> None:
    async with client(Wire(lambda r: failure(404, {"title": "Not found", "detail": "Gone"}))) as c:
        with pytest.raises(NotFoundError) as info:
            await c.get(PATH)
    assert all(part in str(info.value) for part in ("404", "Not found", "Gone"))
    assert info.value.first_error_code is None


def test_s6_1_errors_build_a_message_from_status_and_first_error() -> None:
    error = ApiError(
        http_status=422,
        errors=[{"code": "00201", "title": "Entité non traitable", "detail": "Missing context"}],
        url="https://x.test/foo",
    )
    assert all(
        part in str(error) for part in ("422", "00201", "Entité non traitable", "Missing context")
    )
    bare = ServerError(http_status=500)
    assert (None, {}, None) == (
        bare.first_error_code,
        bare.first_error_meta,
        bare.first_error_title,
    )


# -- §7 Rate limiting -----------------------------------------------------------------------


def test_s7_1_headers_parse_to_integers_and_a_timestamp() -> None:
    rl = parse_rate_limit(
        httpx.Headers(
            {"RateLimit-Limit": "50", "RateLimit-Remaining": "47", "RateLimit-Reset": "1637223155"}
        )
    )
    assert rl is not None
    assert (50, 47) == (rl.limit, rl.remaining)
    assert isinstance(rl.limit, int)
    assert isinstance(rl.remaining, int)
    assert dt.datetime(2021, 11, 18, 8, 12, 35, tzinfo=dt.UTC) == rl.reset_at


def test_s7_1_missing_headers_yield_none() -> None:
    assert parse_rate_limit(httpx.Headers({"Content-Type": "application/json"})) is None


def test_s7_1_malformed_headers_yield_none_without_raising() -> None:
    rl = parse_rate_limit(
        httpx.Headers(
            {
                "RateLimit-Limit": "not-a-number",
                "RateLimit-Remaining": "oops",
                "RateLimit-Reset": "NaN",
            }
        )
    )
    assert rl is None


def test_s7_1_partial_headers_give_what_they_can() -> None:
    only_reset = parse_rate_limit(httpx.Headers({"RateLimit-Reset": "1700000000"}))
    assert only_reset is not None
    assert (None, None) == (only_reset.limit, only_reset.remaining)
    assert dt.datetime.fromtimestamp(1700000000, dt.UTC) == only_reset.reset_at
    one_bad = parse_rate_limit(
        httpx.Headers({"RateLimit-Limit": "50", "RateLimit-Remaining": "x", "RateLimit-Reset": "y"})
    )
    assert RateLimit(50, None, None) == one_bad
    assert one_bad is not None
    assert one_bad.reset_at is None


def test_s7_1_header_names_are_case_insensitive_even_in_a_plain_mapping() -> None:
    upper = {"RateLimit-Limit": "50", "RateLimit-Remaining": "49", "RateLimit-Reset": "1700000000"}
    lower = {k.lower(): v for k, v in upper.items()}
    assert parse_rate_limit(upper) == parse_rate_limit(lower) == RateLimit(50, 49, 1700000000.0)


def test_s7_1_a_rate_limit_is_built_with_its_reset_at_timestamp() -> None:
    """The value object takes the spec's ``reset_at`` as well as the epoch it keeps."""
    when = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    built = RateLimit(limit=250, remaining=0, reset_at=when)
    assert RateLimit(250, 0, when.timestamp()) == built
    assert when == built.reset_at
    assert built == RateLimit(250, 0, reset_at=when.replace(tzinfo=None))  # naive: UTC
    paris = dt.timezone(dt.timedelta(hours=1))
    assert built == RateLimit(250, 0, reset_at=when.astimezone(paris))
    assert RateLimit(None, None, None) == RateLimit()
    with pytest.raises(TypeError, match="not both"):
        RateLimit(250, 0, when.timestamp(), reset_at=when)
    assert RateLimit(250, 1, when.timestamp()) == attrs.evolve(built, remaining=1)


def test_s7_2_rate_limit_retry_after_counts_to_the_reset() -> None:
    now = 1_700_000_000.0
    assert 30 == RateLimit(50, 0, now + 30).retry_after(now)
    assert 0 == RateLimit(50, 0, now - 30).retry_after(now)
    assert RateLimit(50, 10, None).retry_after(now) is None


async def test_s7_1_every_response_parses_the_headers() -> None:
    headers = {
        "RateLimit-Limit": "50",
        "RateLimit-Remaining": "49",
        "RateLimit-Reset": "1700000000",
    }
    async with client(Wire(lambda r: envelope({}, headers=headers))) as c:
        r = await c.get(PATH)
    assert r.rate_limit is not None
    assert (50, 49) == (r.rate_limit.limit, r.rate_limit.remaining)
    async with client(Wire(lambda r: failure(404, {"code": "04040"}, headers=headers))) as c:
        with pytest.raises(NotFoundError) as info:
            await c.get(PATH)
    assert info.value.rate_limit is not None
    assert 49 == info.value.rate_limit.remaining


async def _rate_limited(
    headers: dict[str, str], meta: dict[str, Any] | None = None
) -> RateLimitError:
    item = {"code": "00429", "title": "t", "detail": "d", "meta": meta or {}}
    wire = Wire(lambda r: failure(429, item, headers=headers))
    async with client(wire) as c:
        with pytest.raises(RateLimitError) as info:
            await c.get(PATH)
    assert 1 == len(wire.requests)
    return info.value


async def test_s7_2_retry_after_from_rate_limit_reset() -> None:
    reset = int(time.time()) + 42
    headers = {"RateLimit-Limit": "250", "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)}
    error = await _rate_limited(headers)
    assert error.retry_after is not None
    assert 40 <= error.retry_after <= 44


async def test_s7_2_retry_after_from_rate_limit_reset_alone() -> None:
    error = await _rate_limited({"RateLimit-Reset": str(int(time.time()) + 17)})
    assert error.retry_after is not None
    assert 14 <= error.retry_after <= 20


async def test_s7_2_retry_after_falls_back_to_meta_retry_in() -> None:
    assert 7 == (await _rate_limited({}, {"retry_in": 7})).retry_after


async def test_s7_2_retry_after_clamps_at_zero_for_a_past_reset() -> None:
    assert 0 == (await _rate_limited({"RateLimit-Reset": str(int(time.time()) - 30)})).retry_after


async def test_s7_2_retry_after_is_none_never_zero_when_unknown() -> None:
    assert (await _rate_limited({})).retry_after is None


async def test_s7_2_no_automatic_retry_by_default() -> None:
    wire = Wire(lambda r: failure(503, {"code": "05000"}))
    async with client(wire) as c:
        assert c.settings.retry is None
        with pytest.raises(ProviderUnavailableError):
            await c.get(PATH)
    assert 1 == len(wire.requests)


def _scripted(*answers: httpx.Response) -> Wire:
    queue = list(answers)
    return Wire(lambda r: queue.pop(0) if len(queue) > 1 else queue[0])


async def test_s7_3_opt_in_retry_on_502_503_stops_at_max() -> None:
    transient = failure(502, {"code": "04999", "title": "t", "detail": "d"})
    wire = _scripted(transient, failure(503, {"code": "05000"}), envelope({"ok": True}))
    async with client(wire, retry=RetryPolicy(max_attempts=3, base_delay=0.0, seed=1)) as c:
        assert {"ok": True} == (await c.get(PATH)).data
    assert 3 == len(wire.requests)
    stuck = _scripted(failure(503, {"code": "05000"}))
    async with client(stuck, retry=RetryPolicy(max_attempts=2, base_delay=0.0, seed=1)) as c:
        with pytest.raises(ProviderUnavailableError) as info:
            await c.get(PATH)
    assert 2 == len(stuck.requests) == len(info.value.attempts)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_s7_3_never_retries_4xx_other_than_429(status: int) -> None:
    wire = Wire(lambda r: failure(status, {"code": "00000"}))
    async with client(wire, retry=RetryPolicy(max_attempts=5, base_delay=0.0)) as c:
        with pytest.raises(ClientError):
            await c.get(PATH)
    assert 1 == len(wire.requests)


# -- §8 Timeouts ----------------------------------------------------------------------------


def test_s8_connect_timeout_is_5_seconds_and_overridable() -> None:
    assert 5.0 == Timeouts().connect
    assert 2.0 == AsyncClient(token=TOKEN, timeouts=Timeouts(connect=2.0)).settings.timeouts.connect


async def test_s8_read_timeouts_are_overridable_per_client() -> None:
    """Departure: JSON reads default to 15 s (README); documents keep the spec's 30 s."""
    assert (15.0, 30.0) == (Timeouts().json, Timeouts().document)
    seen: list[Any] = []

    def grab(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return envelope({})

    async with client(Wire(grab), timeouts=Timeouts(connect=1.5, json=30.0)) as c:
        await c.get(PATH)
    assert (1.5, 30.0) == (seen[0]["connect"], seen[0]["read"])


async def test_s8_a_timeout_is_a_transport_error_with_method_url_and_cause() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    async with client(Wire(slow)) as c:
        with pytest.raises(TransportError) as info:
            await c.get(PATH)
    assert "GET" == info.value.method
    assert PATH in info.value.url
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


# -- §9 Public API surface -------------------------------------------------------------------


def test_s9_1_resources_are_grouped_by_provider() -> None:
    from apientreprise_async._gen_resources import Resources

    providers = {e.provider for e in apientreprise_async.all_endpoints() if e.version >= 3}
    assert providers == set(Resources.__annotations__)


def _literal_names() -> dict[tuple[str, str], str]:
    """§9.1's rule applied by hand: last non-templated segment, collisions take the one before."""
    paths: dict[str, dict[str, list[str]]] = {}
    for e in apientreprise_async.all_endpoints():
        if e.version >= 3:
            segments = e.path.strip("/").split("/")[2:]
            words = [s.replace("-", "_") for s in segments if not s.startswith("{")]
            paths.setdefault(e.provider, {})["/".join(segments)] = words
    names: dict[tuple[str, str], str] = {}
    for provider, logical in paths.items():
        start = {path: len(words) - 1 for path, words in logical.items()}
        while True:
            named = {path: "_".join(logical[path][start[path] :]) for path in logical}
            taken = list(named.values())
            clashing = [p for p in logical if taken.count(named[p]) > 1 and start[p] > 0]
            if not clashing:
                break
            for path in clashing:
                start[path] -= 1
        names.update({(provider, path): name for path, name in named.items()})
    return names


def test_s9_1_method_names_follow_the_naming_rule_literally() -> None:
    from apientreprise_async._gen_resources import RENAMED

    c = AsyncClient(token=TOKEN)
    expected = _literal_names()
    for (provider, _), name in expected.items():
        assert callable(getattr(getattr(c, provider), name, None)), f"{provider}.{name}"
    assert (
        "annee"
        == expected[("gip_mds", "etablissements/{siret}/effectifs_mensuels/{month}/annee/{year}")]
    )
    assert {("insee", "diffusibles_adresse"), ("insee", "etablissements_adresse")} <= {
        (p, n) for (p, _), n in expected.items()
    }
    # The methods are exactly the rule's names, plus the old names kept as deprecated aliases.
    public = {
        (provider, name)
        for provider in {p for p, _ in expected}
        for name in dir(getattr(c, provider))
        if not name.startswith("_")
    }
    assert public == {(p, n) for (p, _), n in expected.items()} | set(RENAMED)


async def test_s9_1_gip_mds_takes_year_then_month() -> None:
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    async with client(wire) as c:
        for call in (
            c.gip_mds.annee(SIRET, 2024, 2),
            c.gip_mds.annee(SIRET, month=2, year=2024),
        ):
            with pytest.raises(NotFoundError):
                await call
    path = f"/v3/gip_mds/etablissements/{SIRET}/effectifs_mensuels/02/annee/2024"
    assert [path, path] == [r.url.path for r in wire.requests]


async def test_s9_1_a_single_version_method_accepts_its_only_version() -> None:
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    async with client(wire) as c:
        with pytest.raises(NotFoundError):
            await c.insee.successions(SIRET, version=3)
        with pytest.raises(ValueError, match="version 4"):
            await c.insee.successions(SIRET, version=4)  # type: ignore[arg-type]
    assert [f"/v3/insee/sirene/etablissements/{SIRET}/successions"] == [
        r.url.path for r in wire.requests
    ]


async def test_s9_1_path_parameters_positional_query_parameters_keywords() -> None:
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    async with client(wire) as c:
        with pytest.raises(NotFoundError):
            await c.dgfip.liasses_fiscales(SIREN, 2023)
    assert f"/v3/dgfip/unites_legales/{SIREN}/liasses_fiscales/2023" == wire.requests[0].url.path


async def test_s9_1_default_version_is_the_latest_and_older_ones_warn_when_deprecated() -> None:
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    async with client(wire) as c:
        with pytest.raises(NotFoundError):
            await c.insee.unites_legales(SIREN)
        with pytest.warns(DeprecationWarning, match="unites_legales"), pytest.raises(NotFoundError):
            await c.insee.unites_legales(SIREN, version=3)
    assert [
        f"/v4/insee/sirene/unites_legales/{SIREN}",
        f"/v3/insee/sirene/unites_legales/{SIREN}",
    ] == [r.url.path for r in wire.requests]


async def test_s9_1_an_unknown_version_is_an_argument_error() -> None:
    wire = Wire()
    async with client(wire) as c:
        with pytest.raises(ValueError, match=r"version 99.*supported: 3, 4"):
            await c.insee.unites_legales(SIREN, version=99)  # type: ignore[call-overload]
    assert [] == wire.requests


async def test_s9_2_get_escape_hatch_runs_the_same_pipeline() -> None:
    headers = {
        "RateLimit-Limit": "250",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "1900000000",
    }
    wire = Wire(lambda r: envelope({"anything": 1}, headers=headers))
    async with client(wire) as c:
        r = await c.get(
            "/v3/not/yet/wrapped",
            params={"context": "essai", "extra": None},
            headers={"X-Trace": "1"},
        )
        with pytest.raises(InvalidSiretError):
            await c.get("/v3/not/yet/wrapped", params={"recipient": "1"})
    sent = wire.requests[0]
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert ("essai", RECIPIENT) == (sent.url.params["context"], sent.url.params["recipient"])
    assert "extra" not in sent.url.params
    assert "1" == sent.headers["x-trace"]
    assert {"anything": 1} == r.data
    assert r.rate_limit is not None
    assert 1 == r.rate_limit.remaining


async def test_s9_3_missing_required_parameter_is_a_native_error_before_any_call() -> None:
    wire = Wire()
    async with client(wire) as c:
        with pytest.raises(TypeError):
            await c.dgfip.liasses_fiscales(SIREN)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="year"):
            await c.call("api_entreprise_v3_dgfip_liasses_fiscales", siren=SIREN)
    assert [] == wire.requests


async def test_s9_3_none_optional_parameters_are_dropped() -> None:
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    async with client(wire) as c:
        with pytest.raises(NotFoundError):
            await c.gip_mds.effectifs_annuels(SIREN, 2023, nature_effectif=None)
    assert "nature_effectif" not in wire.requests[0].url.params
    assert "nature_effectif=" not in str(wire.requests[0].url)


async def test_s9_4_array_parameters_use_one_pair_of_brackets() -> None:
    wire = Wire(lambda r: envelope({}))
    async with client(wire) as c:
        await c.get("/v3/not/yet/wrapped", params={"prenoms[]": ["Jean", "Paul"]})
    query = wire.requests[0].url.query.decode()
    assert "prenoms%5B%5D=Jean&prenoms%5B%5D=Paul" in query
    assert "%5B%5D%5B%5D" not in query


# -- §10 Logging and User-Agent --------------------------------------------------------------


async def test_s10_one_structured_event_per_request(caplog: pytest.LogCaptureFixture) -> None:
    headers = {"RateLimit-Remaining": "48", "X-Request-ID": "req-1"}
    caplog.set_level(logging.DEBUG, logger="apientreprise_async")
    async with client(Wire(lambda r: envelope({}, headers=headers))) as c:
        await c.get(PATH)
    records = [r for r in caplog.records if getattr(r, "http_status", None) is not None]
    assert 1 == len(records)
    event = records[0]
    assert ("GET", 200, 48, "req-1") == (
        event.method,  # type: ignore[attr-defined]
        event.http_status,  # type: ignore[attr-defined]
        event.rate_limit_remaining,  # type: ignore[attr-defined]
        event.request_id,  # type: ignore[attr-defined]
    )
    assert event.url.startswith(PATH + "?")  # type: ignore[attr-defined]
    assert f"recipient={RECIPIENT}" in event.url  # type: ignore[attr-defined]
    assert event.duration_ms >= 0  # type: ignore[attr-defined]
    assert TOKEN not in caplog.text


async def test_s10_user_agent_format_on_every_request() -> None:
    wire = Wire(lambda r: envelope({}))
    async with client(wire) as c:
        await c.get(PATH)
        await c.get("/v3/not/yet/wrapped")
    agents = {r.headers["user-agent"] for r in wire.requests}
    assert 1 == len(agents)
    assert UA_FORMAT.match(agents.pop())


async def test_s10_user_agent_is_configurable() -> None:
    wire = Wire(lambda r: envelope({}))
    async with client(wire, user_agent="MonService/2.1") as c:
        await c.get(PATH)
    assert "MonService/2.1" == wire.requests[0].headers["user-agent"]


# -- §11 Configuration -----------------------------------------------------------------------


def test_s11_precedence_explicit_then_environment_then_default(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("API_ENTREPRISE_TOKEN", "env-token")
    no_env.setenv("API_ENTREPRISE_ENV", "staging")
    from_env = AsyncClient()
    assert "staging" == from_env.settings.environment
    assert BearerToken("env-token").fingerprint == from_env.token_fingerprint
    explicit = AsyncClient(token="arg-token", environment="production")
    assert "production" == explicit.settings.environment
    assert BearerToken("arg-token").fingerprint == explicit.token_fingerprint
    no_env.setenv("API_ENTREPRISE_BASE_URL", "https://gateway.test")
    assert "https://gateway.test" == AsyncClient().settings.base_url
    assert "https://other.test" == AsyncClient(base_url="https://other.test").settings.base_url


def test_s11_configuration_is_immutable() -> None:
    settings = AsyncClient(token=TOKEN).settings
    for name in ("base_url", "environment", "recipient", "timeouts", "user_agent"):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(settings, name, "x")


async def test_s11_with_returns_a_new_client_and_leaves_the_original_unchanged() -> None:
    wire = Wire(lambda r: envelope({}))
    async with client(wire) as original:
        staging = original.with_options(environment="staging")
        gateway = staging.with_options(base_url="https://gateway.test/")
        other_token = original.with_options(token="other-token", context="Autre")
        for copy in (staging, gateway, other_token):
            assert copy is not original
            await copy.get(PATH)
        await original.get(PATH)
    assert ("production", "https://entreprise.api.gouv.fr") == (
        original.settings.environment,
        original.settings.base_url,
    )
    assert ("staging", "https://staging.entreprise.api.gouv.fr") == (
        staging.settings.environment,
        staging.settings.base_url,
    )
    assert ("staging", "https://gateway.test") == (
        gateway.settings.environment,
        gateway.settings.base_url,
    )
    hosts = [r.url.host for r in wire.requests]
    assert [
        "staging.entreprise.api.gouv.fr",
        "gateway.test",
        "entreprise.api.gouv.fr",
        "entreprise.api.gouv.fr",
    ] == hosts
    tokens = [r.headers["authorization"] for r in wire.requests]
    assert [f"Bearer {TOKEN}", f"Bearer {TOKEN}", "Bearer other-token", f"Bearer {TOKEN}"] == tokens
    assert ("Autre", "Aide X") == (
        wire.requests[2].url.params["context"],
        wire.requests[3].url.params["context"],
    )


async def test_s11_with_can_swap_the_auth_strategy() -> None:
    wire = Wire(lambda r: envelope({}))
    async with client(wire) as original:
        swapped = original.with_options(auth=BearerToken("from-a-strategy"))
        await swapped.get(PATH)
        with pytest.raises(ValueError, match="token or auth"):
            original.with_options(token="a", auth=BearerToken("b"))
        with pytest.raises(ValueError, match="environment"):
            original.with_options(environment="dev")
    assert "Bearer from-a-strategy" == wire.requests[0].headers["authorization"]
    assert original.token_fingerprint != swapped.token_fingerprint


# -- §12 Testing -----------------------------------------------------------------------------


# §12.1's other unit surfaces are walked above under their own sections (SIRET validator §4.1,
# configuration §11, auth §3.1, defaults §4, envelope §5, error matrix §6.2, rate limits §7,
# retries §7.3, User-Agent §10); tests/test_resources.py also calls every typed method against
# records of every shape.


async def test_s12_1_every_resource_method_runs_with_valid_dummies() -> None:
    """Every typed method (old names included) reaches the HTTP layer without a local error."""
    import inspect
    import warnings

    from apientreprise_async._catalogue import IdKind
    from apientreprise_async._gen_resources import Resources

    dummies = {
        IdKind.SIREN: SIREN,
        IdKind.SIRET: SIRET,
        IdKind.YEAR: 2023,
        IdKind.MONTH: 3,
        IdKind.SIRET_OR_EORI: SIRET,
        IdKind.SIRET_OR_RNA: "W751004076",
        IdKind.SIREN_OR_RNA: SIREN,
        IdKind.SIREN_OR_SIRET_OR_RNA: SIRET,
    }
    kinds = {p.name: p.kind for e in apientreprise_async.all_endpoints() for p in e.path_params}
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    called = []
    async with client(wire, check_maintenance=False) as c:
        for provider in sorted(Resources.__annotations__):
            group = getattr(c, provider)
            for name, method in inspect.getmembers(group, inspect.iscoroutinefunction):
                if name.startswith("_"):
                    continue
                params = inspect.signature(method).parameters.values()
                args = [dummies[kinds[p.name]] for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    with pytest.raises(NotFoundError):
                        await method(*args)
                called.append(f"{provider}.{name}")
    assert len(called) == len(wire.requests) > 40


def test_s12_3_readme_testing_section_stubs_a_200_and_a_429_with_reset() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    testing = readme.split("\n## Testing\n", 1)[1].split("\n## ", 1)[0]
    assert "respx" in testing
    assert "429" in testing
    assert "RateLimit-Reset" in testing
    assert "200" in testing


# -- §13 Thread safety -----------------------------------------------------------------------


async def test_s13_one_client_shared_by_concurrent_tasks() -> None:
    import anyio

    wire = Wire(lambda r: envelope({"echo": r.url.params["object"]}))
    seen: dict[int, Any] = {}
    async with client(wire) as c:

        async def one(i: int) -> None:
            seen[i] = (await c.get(PATH, params={"object": f"D-{i}"})).data

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert {i: {"echo": f"D-{i}"} for i in range(20)} == seen


def test_s13_one_synchronous_client_shared_by_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from apientreprise_async import Client

    wire = Wire(lambda r: envelope({"echo": r.url.params["object"]}))
    with Client(
        token=TOKEN, recipient=RECIPIENT, context="c", object="o", transport=wire.transport()
    ) as c:
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda i: c.get(PATH, params={"object": f"D-{i}"}).data, range(24))
            )
        staging = c.with_options(environment="staging", token="other-token")
        staging.get(PATH)
    assert [{"echo": f"D-{i}"} for i in range(24)] == answers
    assert 25 == len(wire.requests)
    last = wire.requests[-1]
    assert ("staging.entreprise.api.gouv.fr", "Bearer other-token") == (
        last.url.host,
        last.headers["authorization"],
    )


def _after_a_429(request: httpx.Request) -> httpx.Response:
    return failure(429, {"code": "00429"}, headers={"Retry-After": "60"})


async def test_s13_clients_with_their_own_governor_do_not_share_a_pause() -> None:
    """README: pass your own Governor() to keep a client apart (its IP bucket is still the process's)."""
    from apientreprise_async import Governor

    limited, fine = Wire(_after_a_429), Wire(lambda r: envelope({"ok": True}))
    first = client(limited, governor=Governor(), max_wait=0)
    second = client(fine, governor=Governor(), max_wait=0)
    async with first, second:
        with pytest.raises(RateLimitError) as server:
            await first.get(PATH)
        with pytest.raises(RateLimitError) as local:
            await first.get(PATH)  # its own bucket is paused: refused without a request
        assert {"ok": True} == (await second.get(PATH)).data
    assert (False, True) == (server.value.local, local.value.local)
    assert (1, 1) == (len(limited.requests), len(fine.requests))
    bucket = f"{first.token_fingerprint}/json_resources_entreprise"
    one, two = first.governor.snapshot().buckets, second.governor.snapshot().buckets
    assert one[bucket].paused_until > two[bucket].paused_until
    assert 2 == one["ip"].in_period == two["ip"].in_period  # one IP bucket for the process


async def test_s13_an_own_governor_leaves_nothing_behind_in_the_process_backend() -> None:
    import gc

    from apientreprise_async import Governor
    from apientreprise_async._governor import default_backend

    async with client(Wire(), governor=Governor()) as c:
        await c.get(PATH)
        mine = set(c.governor.snapshot().buckets) - {"ip"}
        assert mine
    del c
    gc.collect()
    assert not any(key.endswith(tuple(mine)) for key in default_backend().snapshot())
    assert "ip" in default_backend().snapshot()


async def test_s13_departure_clients_of_the_default_governor_share_a_pause() -> None:
    """Departure (README): one governor per process by default, so a 429 pauses every client."""
    limited, fine = Wire(_after_a_429), Wire(lambda r: envelope({"ok": True}))
    async with client(limited, max_wait=0) as first, client(fine, max_wait=0) as second:
        assert first.governor is second.governor
        with pytest.raises(RateLimitError):
            await first.get(PATH)
        with pytest.raises(RateLimitError) as info:
            await second.get(PATH)
    assert info.value.local
    assert [] == fine.requests


# -- §14 Transport ---------------------------------------------------------------------------


def test_s14_tls_verification_cannot_be_disabled() -> None:
    with pytest.raises(ValueError, match="TLS"):
        AsyncClient(token=TOKEN, verify=False)


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def test_s14_tls_verification_cannot_be_disabled_any_other_way() -> None:
    with pytest.raises(ValueError, match="cannot be disabled"):
        AsyncClient(token=TOKEN, verify=_unverified())
    async with httpx.AsyncClient(verify=False) as unverified:
        with pytest.raises(ValueError, match="cannot be disabled"):
            AsyncClient(token=TOKEN, http_client=unverified)
    with pytest.raises(ValueError, match="cannot be disabled"):
        AsyncClient(token=TOKEN, transport=httpx.AsyncHTTPTransport(verify=False))


async def test_s14_proxy_environment_variables_are_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real proxy on loopback sees the tunnel request; it refuses, the call is a TransportError."""
    import anyio
    import anyio.abc

    seen: list[bytes] = []

    async def proxy(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            seen.append(head)
            await stream.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy)
        async with AsyncClient(
            token=TOKEN, recipient=RECIPIENT, context="c", object="o", retry=None
        ) as c:
            with pytest.raises(TransportError):
                await c.get(PATH)
        tg.cancel_scope.cancel()
    assert 1 == len(seen)
    assert seen[0].startswith(b"CONNECT entreprise.api.gouv.fr:443 ")
    assert TOKEN.encode() not in seen[0]  # the token only ever travels inside the tunnel


async def test_s14_responses_are_never_cached() -> None:
    wire = Wire(lambda r: envelope({"n": len(wire.requests)}))
    async with client(wire) as c:
        first = await c.get(PATH)
        second = await c.get(PATH)
    assert ({"n": 1}, {"n": 2}) == (first.data, second.data)
    assert 2 == len(wire.requests)


async def test_s14_departure_only_calls_in_flight_together_share_an_answer() -> None:
    """Departure (README): coalescing shares a request between simultaneous twins, no more."""
    import anyio

    release = anyio.Event()
    wire = Wire(lambda r: envelope({"n": len(wire.requests)}))

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return wire(request)

    results: list[Any] = []
    async with AsyncClient(
        token=TOKEN,
        recipient=RECIPIENT,
        context="c",
        object="o",
        transport=httpx.MockTransport(slow),
    ) as c:

        async def one() -> None:
            results.append((await c.get(PATH)).data)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
            await anyio.sleep(0.01)
            release.set()
        results.append((await c.get(PATH)).data)
        async with c.with_options(coalesce=False) as apart, anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lambda: apart.get(PATH, params={"object": "twin"}))
    assert [{"n": 1}, {"n": 1}, {"n": 2}] == results
    assert 4 == len(wire.requests)  # one shared, one later, two with coalescing off


# -- §15 and §16 Packaging and documentation -------------------------------------------------


def test_s15_changelog_and_semver() -> None:
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text("utf-8")
    assert re.fullmatch(r"\d+\.\d+\.\d+", apientreprise_async._version.version())


async def test_s15_renamed_methods_warn_before_removal() -> None:
    from apientreprise_async._gen_resources import RENAMED

    old_args: dict[str, list[Any]] = {
        "associations_open_data": [SIREN],
        "effectifs_mensuels": [SIRET, 2, 2024],  # the old order: month, year
        "etablissements_diffusibles_adresse": [SIRET],
        "unites_legales_diffusibles_siege_social": [SIREN],
    }
    assert set(old_args) == {old for _, old in RENAMED}
    wire = Wire(lambda r: failure(404, {"code": "04040"}))
    async with client(wire) as c:
        for (provider, old), new in RENAMED.items():
            args = old_args[old]
            group = getattr(c, provider)
            warns = pytest.warns(DeprecationWarning, match=f"{provider}.{new}")
            with warns, pytest.raises(NotFoundError):
                await getattr(group, old)(*args)
            new_args = [SIRET, 2024, 2] if new == "annee" else args
            with pytest.raises(NotFoundError):  # no warning: warnings are errors in this suite
                await getattr(group, new)(*new_args)
    paths = [r.url.path for r in wire.requests]
    assert paths[::2] == paths[1::2]


def test_s15_runtime_dependencies_stay_minimal() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0] for d in project["dependencies"]}
    assert {"httpx", "anyio", "attrs", "cattrs"} == names
    assert project["requires-python"].startswith(">=")


def test_s16_every_public_name_is_documented() -> None:
    undocumented = []
    for name in apientreprise_async.__all__:
        obj = getattr(apientreprise_async, name)
        if callable(obj) and not (obj.__doc__ or "").strip():
            undocumented.append(name)
        if isinstance(obj, type):
            for attr, member in vars(obj).items():
                if (
                    not attr.startswith("_")
                    and callable(member)
                    and not (member.__doc__ or "").strip()
                ):
                    undocumented.append(f"{name}.{attr}")
    assert [] == undocumented


def test_s16_readme_sections() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text("utf-8"), flags=re.M)
    for section in ("Installation", "Configuration", "Quickstart", "Error handling", "Testing"):
        assert section in headings

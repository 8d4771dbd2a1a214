"""Hostile input, in process: tokens, origins, TLS, identifiers, Retry-After, CORS, batches.

What needs a real server (dribbling, huge answers, frame captures of real
HTTP errors) is in test_hardening_server.py; the CLI in test_hardening_cli.py.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from apientreprise_async import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    BearerToken,
    Governor,
    InvalidParameterError,
    Limits,
    RateLimitError,
)
from apientreprise_async._catalogue import GROUP_LIMITS
from apientreprise_async._errors import MAX_RETRY_AFTER, parse_retry_after
from apientreprise_async.audit import AuditRecord
from apientreprise_async.backends import InMemoryBackend

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

SIREN = "418166096"
UL = "api_entreprise_v4_insee_unites_legales"
UL_PATH = f"/v4/insee/sirene/unites_legales/{SIREN}"
FAST = Limits(groups=dict.fromkeys(GROUP_LIMITS, 1000), period=1.0)


class Recorder:
    """A transport keeping every request that reached it."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda r: httpx.Response(200, json={"data": {"id": 1}}))

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.handler(request)

        return httpx.MockTransport(handle)


def client_for(rec: Recorder, audit: list[AuditRecord] | None = None, **kw: Any) -> AsyncClient:
    kw.setdefault("token", TOKEN)
    kw.setdefault("recipient", RECIPIENT)
    kw.setdefault("context", "tests")
    kw.setdefault("object", "case-1")
    kw.setdefault("limits", FAST)
    if audit is not None:
        kw["audit"] = audit.append
    return AsyncClient(transport=rec.transport(), **kw)


# -- tokens ---------------------------------------------------------------------------


BAD_TOKENS = {
    "nul": TOKEN[:20] + "\x00" + TOKEN[20:],
    "crlf": TOKEN[:20] + "\r\nX-Injected: 1" + TOKEN[20:],
    "non_ascii": TOKEN[:20] + "é" + TOKEN[20:],
    "inner_space": TOKEN[:20] + " " + TOKEN[20:],
    "bom": "\ufeff" + TOKEN,
    "del": TOKEN + "\x7f",
}


@pytest.mark.parametrize("token", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
def test_a_token_that_is_not_visible_ascii_is_refused_without_being_quoted(token: str) -> None:
    """NUL, CR/LF, non-ASCII, BOM: refused when the client is built; the message hides it."""
    with pytest.raises(InvalidParameterError) as info:
        AsyncClient(token)
    message = str(info.value)
    assert info.value.parameter == "token"
    assert "position" in message
    for piece in (TOKEN, TOKEN[:20], TOKEN[20:]):
        assert piece not in message
    assert TOKEN[:20] not in repr(info.value)


def test_a_token_that_is_not_a_string_is_refused() -> None:
    """bytes are not silently str()-ed into "b'...'"."""
    with pytest.raises(InvalidParameterError, match="must be a string") as info:
        AsyncClient(token=TOKEN.encode())  # type: ignore[arg-type]
    assert TOKEN not in str(info.value)


def test_a_token_not_shaped_like_a_jwt_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opaque tokens work (emulators, future formats), the log says once that it looks odd."""
    caplog.set_level(logging.WARNING, logger="apientreprise_async")
    opaque = "opaque-token-for-hardening-tests"
    AsyncClient(opaque)
    AsyncClient(opaque)
    warned = [r for r in caplog.records if "does not look like a JWT" in r.getMessage()]
    assert 1 == len(warned)
    assert opaque not in warned[0].getMessage()
    caplog.clear()
    AsyncClient(TOKEN)
    assert not [r for r in caplog.records if "JWT" in r.getMessage()]


async def test_an_auth_strategy_giving_a_header_with_crlf_sends_nothing() -> None:
    """A custom strategy's header is checked like a token, its value never quoted."""

    class Injecting:
        fingerprint = "injecting"
        token_info = None

        def auth_headers(self) -> dict[str, str]:
            return {"Authorization": "Bearer abc\r\nX-Evil: 1"}

    rec = Recorder()
    audit: list[AuditRecord] = []
    async with client_for(rec, audit, token=None, auth=Injecting()) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get(UL_PATH)
    assert "abc" not in str(info.value)
    assert [] == rec.requests
    assert ["refused"] == [r.outcome for r in audit]


async def test_caller_headers_cannot_replace_the_credentials() -> None:
    """get(headers={"Authorization": ...}) is refused: it would bypass the token's governor."""
    rec = Recorder()
    async with client_for(rec) as client:
        with pytest.raises(InvalidParameterError, match="set by the client"):
            await client.get(UL_PATH, headers={"authorization": "Bearer other"})
        with pytest.raises(InvalidParameterError, match="line breaks"):
            await client.get(UL_PATH, headers={"X-Note": "a\r\nb"})
    assert [] == rec.requests


def test_credentials_are_masked() -> None:
    """The object holding the header value shows no value, and cannot be pickled."""
    from apientreprise_async._auth import Credentials

    credentials = Credentials.from_strategy(BearerToken(TOKEN))
    assert "Credentials(Authorization=***)" == repr(credentials)
    assert TOKEN not in repr(credentials) + str(credentials)
    headers = httpx.Headers()
    credentials.apply(headers)
    assert f"Bearer {TOKEN}" == headers["authorization"]
    with pytest.raises(TypeError):
        credentials.__reduce__()


# -- where the token goes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://entreprise.api.gouv.fr/files/a.pdf",  # cleartext on the API's host
        "https://entreprise.api.gouv.fr:8443/files/a.pdf",  # another port
        "https://storage.entreprise.api.gouv.fr/files/a.pdf",  # a subdomain
        "https://entreprise.api.gouv.fr.attacker.test/files/a.pdf",
    ],
    ids=["http", "port", "subdomain", "suffix"],
)
async def test_download_sends_the_token_only_to_the_api_origin(url: str, tmp_path: Any) -> None:
    """Scheme, host and port must all be the API's for the token to go along."""
    rec = Recorder(
        lambda r: httpx.Response(200, content=b"%PDF", headers={"Content-Type": "application/pdf"})
    )
    async with client_for(rec) as client:
        await client.download(url, tmp_path / "a.pdf")
        await client.download("https://entreprise.api.gouv.fr/files/a.pdf", tmp_path / "b.pdf")
    assert "authorization" not in rec.requests[0].headers
    assert rec.requests[1].headers["authorization"] == f"Bearer {TOKEN}"


async def test_download_to_the_loopback_emulator_carries_the_token(tmp_path: Any) -> None:
    """An explicitly configured loopback base URL is the API origin (the emulator)."""
    rec = Recorder(
        lambda r: httpx.Response(200, content=b"%PDF", headers={"Content-Type": "application/pdf"})
    )
    async with client_for(rec, base_url="http://127.0.0.1:8765") as client:
        await client.download("http://127.0.0.1:8765/files/a.pdf", tmp_path / "a.pdf")
        await client.download("http://127.0.0.1:8766/files/a.pdf", tmp_path / "b.pdf")
        await client.download("http://localhost:8765/files/a.pdf", tmp_path / "c.pdf")
    assert [True, False, False] == ["authorization" in r.headers for r in rec.requests]


@pytest.mark.parametrize(
    "base_url",
    [
        "http://entreprise.api.gouv.fr",
        "http://10.0.0.8:8000",
        "https://user:pw@x.test",
        "https://x.test/?a=1",
    ],
)
def test_a_base_url_that_would_expose_the_token_is_refused(base_url: str) -> None:
    """Plain http is for loopback emulators only; no credentials or query in the base URL."""
    with pytest.raises(InvalidParameterError) as info:
        AsyncClient(TOKEN, base_url=base_url)
    assert "base_url" == info.value.parameter


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8000",
        "http://localhost:9",
        "http://[::1]:8000",
        "https://proxy.example.test/api",
    ],
)
def test_loopback_and_https_base_urls_are_accepted(base_url: str) -> None:
    assert base_url == AsyncClient(TOKEN, base_url=base_url).settings.base_url


async def test_a_document_url_with_controls_or_credentials_is_refused(tmp_path: Any) -> None:
    rec = Recorder()
    async with client_for(rec) as client:
        for url in (
            "https://x.test/a\r\nb.pdf",
            "https://u:p@x.test/a.pdf",
            "file:///etc/passwd",
            42,
        ):
            with pytest.raises(InvalidParameterError):
                await client.download(url, tmp_path / "a.pdf")  # type: ignore[arg-type]
    assert [] == rec.requests


# -- TLS ---------------------------------------------------------------------------------


def _unverified_contexts() -> dict[str, ssl.SSLContext]:
    none = ssl.create_default_context()
    none.check_hostname = False
    none.verify_mode = ssl.CERT_NONE
    no_host = ssl.create_default_context()
    no_host.check_hostname = False
    return {"cert_none": none, "no_hostname": no_host}


@pytest.mark.parametrize("name", ["cert_none", "no_hostname"])
def test_an_ssl_context_that_does_not_verify_is_refused(name: str) -> None:
    with pytest.raises(InvalidParameterError, match="cannot be disabled"):
        AsyncClient(TOKEN, verify=_unverified_contexts()[name])


async def test_an_http_client_or_transport_without_verification_is_refused() -> None:
    """verify=False hidden in the caller's httpx client, transport or proxy mount."""
    for kwargs in (
        {"http_client": httpx.AsyncClient(verify=False)},
        {"http_client": httpx.AsyncClient(verify=_unverified_contexts()["cert_none"])},
        {
            "http_client": httpx.AsyncClient(
                mounts={"https://": httpx.AsyncHTTPTransport(verify=False)}
            )
        },
        {"transport": httpx.AsyncHTTPTransport(verify=False)},
    ):
        with pytest.raises(InvalidParameterError, match="cannot be disabled"):
            AsyncClient(TOKEN, **kwargs)  # type: ignore[arg-type]
    async with httpx.AsyncClient() as fine:
        AsyncClient(TOKEN, http_client=fine)
    AsyncClient(TOKEN, verify=ssl.create_default_context())


# -- identifiers ---------------------------------------------------------------------------

FULLWIDTH = SIREN.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
ARABIC_INDIC = SIREN.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


@pytest.mark.parametrize(
    "params",
    [
        {"siren": FULLWIDTH},
        {"siren": ARABIC_INDIC},
        {"siren": "4" * 5000},
        {"siren": 10**5000},
        {"siren": [SIREN]},
        {"siren": 4.18166096e8},
        {
            "siren": SIREN,
            "recipient": RECIPIENT.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
        },
        {"siren": SIREN, "recipient": "1" * 5000},
        {"siren": SIREN, "recipient": 10**5000},
        {"siren": SIREN, "recipient": ["x"]},
        {"siren": SIREN, "context": "a\nb"},
        {"siren": SIREN, "object": "dossier\u200b42"},
        {"siren": SIREN, "unknown": "x"},
    ],
    ids=[
        "fullwidth",
        "arabic_indic",
        "long_text",
        "huge_int",
        "list",
        "float",
        "fullwidth_recipient",
        "long_recipient",
        "huge_int_recipient",
        "list_recipient",
        "context_newline",
        "object_zero_width",
        "unknown",
    ],
)
async def test_bad_input_is_refused_locally_and_audited(params: dict[str, Any]) -> None:
    """Every odd value ends as InvalidParameterError, nothing sent, one "refused" record."""
    rec = Recorder()
    audit: list[AuditRecord] = []
    async with client_for(rec, audit) as client:
        with pytest.raises(InvalidParameterError) as info:
            await client.call(UL, **params)
    assert [] == rec.requests
    assert ["refused"] == [r.outcome for r in audit]
    assert len(str(info.value)) < 400
    for record in audit:
        for value in (record.entity_id, record.recipient, record.context, record.object):
            assert value is None or len(value) < 300


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("year", "２０２４"),
        ("year", "9" * 5000),
        ("month", "٠٣"),
        ("month", "1" * 5000),
        ("month", 10**5000),
    ],
    ids=["fullwidth_year", "long_year", "arabic_month", "long_month", "huge_int_month"],
)
async def test_years_and_months_take_ascii_digits_only(name: str, value: Any) -> None:
    rec = Recorder()
    params = {"siret": "41816609600069", "year": "2024", "month": "03", name: value}
    async with client_for(rec) as client:
        with pytest.raises(InvalidParameterError):
            await client.call(
                "api_entreprise_v3_gip_mds_effectifs_mensuels_etablissement", **params
            )
    assert [] == rec.requests


async def test_free_query_values_are_ascii_and_bounded() -> None:
    """limit="１０" or an object whose str() is anything is refused; an int is sent as digits."""
    rec = Recorder(lambda r: httpx.Response(200, json={"data": []}))
    op = "api_entreprise_v3_ademe_certificats_rge"
    async with client_for(rec) as client:
        for value in ("１０", "1\r\n0", object(), "9" * 300, True):
            with pytest.raises(InvalidParameterError):
                await client.call(op, siret="41816609600069", limit=value)
        assert [] == rec.requests
        await client.call(op, siret="41816609600069", limit=10)
    assert "10" == rec.requests[0].url.params["limit"]


async def test_get_refuses_odd_paths() -> None:
    rec = Recorder()
    async with client_for(rec) as client:
        for path in ("/v3/x?siren=1", "/v3/../admin", "/v3/é", "/v3/a b", "/v3/\x00"):
            with pytest.raises(InvalidParameterError):
                await client.get(path)
    assert [] == rec.requests


# -- Retry-After -------------------------------------------------------------------------


def test_one_parser_for_seconds_and_dates() -> None:
    now = 1_900_000_000.0
    date = email.utils.formatdate(now + 600, usegmt=True)
    assert 600.0 == parse_retry_after(date, now)
    assert 30.0 == parse_retry_after(" 30 ", now)
    assert MAX_RETRY_AFTER == parse_retry_after("1e12", now)
    assert MAX_RETRY_AFTER == parse_retry_after(
        email.utils.formatdate(now + 10**7, usegmt=True), now
    )
    assert 0.0 == parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now)
    assert 0.0 == parse_retry_after("-5", now)
    for junk in ("", "soon", "nan", "inf", "１０", "9" * 100, "Tue, 99 Foo 2026", None):
        assert parse_retry_after(junk, now) is None


async def test_an_http_date_retry_after_is_the_same_wait_everywhere() -> None:
    """Governor pause, exc.retry_after and the FastAPI answer agree on one capped value."""
    pytest.importorskip("fastapi")
    from apientreprise_async.fastapi import error_response

    waits: dict[str, float | None] = {}
    for label, header in (
        ("date", email.utils.formatdate(time.time() + 600, usegmt=True)),
        ("huge", "1e12"),
    ):
        rec = Recorder(
            lambda r, header=header: httpx.Response(
                429, json={"errors": [{"code": "00429"}]}, headers={"Retry-After": header}
            )
        )
        governor = Governor(FAST, backend=InMemoryBackend())  # the pause stays in this test
        async with client_for(rec, limits=None, governor=governor) as client:
            with pytest.raises(RateLimitError) as info:
                await client.get(UL_PATH)
            snapshot = client.governor.snapshot()
        waits[label] = info.value.retry_after
        assert info.value.retry_after is not None
        browser = int(error_response(info.value).headers["Retry-After"])
        assert browser == pytest.approx(info.value.retry_after, abs=2)
        paused = max(b.paused_until for b in snapshot.buckets.values()) - snapshot.now
        assert paused == pytest.approx(info.value.retry_after, abs=5)
    assert 595 <= (waits["date"] or 0) <= 600
    assert MAX_RETRY_AFTER == waits["huge"]


# -- batches --------------------------------------------------------------------------------


async def test_a_batch_survives_any_input(tmp_path: Any) -> None:
    """int, None, 5,000 digits, a list, a float: each input ends as one outcome, the batch goes on."""
    from apientreprise_async.testing import COMPANIES, Emulator

    emulator = Emulator(period=1.0)
    emulator.add_token(TOKEN)
    known = COMPANIES[0].siren
    inputs: list[Any] = [
        int(known),
        None,
        "4" * 5000,
        10**5000,
        [known],
        float(known),
        known.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
        {"siren": known, 1: "x"},
        known,
    ]
    audit: list[AuditRecord] = []
    output = tmp_path / "out.jsonl"
    async with AsyncClient(
        TOKEN,
        transport=emulator.transport(),
        limits=FAST,
        recipient=RECIPIENT,
        context="tests",
        object="case-1",
        audit=audit.append,
    ) as client:
        async with client.batch(UL, inputs, output=output) as outcomes:
            seen = [o async for o in outcomes]
        assert len(inputs) == len(seen)
        by_index = {o.index: o.status for o in seen}
        assert "ok" == by_index[0] == by_index[8]
        assert ["invalid"] * 7 == [by_index[i] for i in range(1, 8)]
        assert len(output.read_text().splitlines()) == len(inputs)
        # Resume: every line is read back and matched to its input, nothing redone.
        again = client.batch(UL, inputs, output=output)
        async with again as outcomes:
            assert [] == [o async for o in outcomes]
        assert len(inputs) == again.stats.skipped
    assert 2 == len(emulator.requests)
    assert 6 == len([r for r in audit if r.outcome == "refused"])


# -- CORS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cors",
    [
        {"allow_origins": ["null"], "allow_credentials": True},
        {"allow_origins": ["https://front.example.gouv.fr", "null"]},
        {"allow_origin_regex": r"https://front.example.gouv.fr"},  # unescaped dots
        {"allow_origin_regex": r"https://.*example\.gouv\.fr"},  # attackerexample.gouv.fr
        {"allow_origin_regex": r"https://front\.example\.gouv\.fr.*"},  # any suffix
        {"allow_origin_regex": r"null|https://front\.example\.gouv\.fr"},
        {"allow_origin_regex": r"https?://.*"},
    ],
    ids=["null_credentials", "null_listed", "dots", "prefix", "suffix", "null_regex", "any"],
)
async def test_cors_letting_an_unlisted_origin_in_is_refused(cors: dict[str, Any]) -> None:
    """Origin: null (any sandboxed iframe) or a loose pattern: the app does not start."""
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from apientreprise_async.fastapi import ApiEntrepriseSettings, make_lifespan

    app = FastAPI(
        lifespan=make_lifespan(
            ApiEntrepriseSettings(token=TOKEN, recipient=RECIPIENT, context="tests")
        )
    )
    app.add_middleware(CORSMiddleware, **cors)
    with pytest.raises(RuntimeError, match="allows every origin, 'null'"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize(
    "cors",
    [
        {"allow_origins": ["https://front.example.gouv.fr"], "allow_credentials": True},
        {"allow_origin_regex": r"https://front\.example\.gouv\.fr"},
        {"allow_origin_regex": r"https://[a-z0-9-]+\.example\.gouv\.fr"},
        {"allow_origin_regex": r"https://.*\.example\.gouv\.fr"},
    ],
    ids=["listed", "escaped", "subdomains", "subdomain_star"],
)
async def test_cors_listing_own_origins_starts(cors: dict[str, Any]) -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from apientreprise_async.fastapi import ApiEntrepriseSettings, make_lifespan

    app = FastAPI(
        lifespan=make_lifespan(
            ApiEntrepriseSettings(token=TOKEN, recipient=RECIPIENT, context="tests")
        )
    )
    app.add_middleware(CORSMiddleware, **cors)
    async with app.router.lifespan_context(app) as state:
        assert state


# -- cancellation -------------------------------------------------------------------------


async def test_a_call_cancelled_after_sending_is_audited_as_cancelled() -> None:
    """The server saw the request: the access is in the trail, with its own outcome."""
    import anyio

    arrived = anyio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await anyio.sleep_forever()
        raise AssertionError

    audit: list[AuditRecord] = []
    async with (
        AsyncClient(
            TOKEN,
            transport=httpx.MockTransport(handle),
            limits=FAST,
            recipient=RECIPIENT,
            context="tests",
            object="case-1",
            audit=audit.append,
        ) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(client.get, UL_PATH)
        await arrived.wait()
        group.cancel_scope.cancel()
    assert ["cancelled"] == [r.outcome for r in audit]
    assert SIREN == audit[0].entity_id
    assert "case-1" == audit[0].object


# -- downloads are audited, and redirects keep the token home -------------------------------


async def test_downloads_are_audited_refusals_included(tmp_path: Any) -> None:
    """Each download is one record: ok, an error status, or refused before sending."""
    rec = Recorder(
        lambda r: (
            httpx.Response(404, json={"errors": [{"code": "01003"}]})
            if r.url.path.endswith("gone.pdf")
            else httpx.Response(200, content=b"%PDF", headers={"Content-Type": "application/pdf"})
        )
    )
    audit: list[AuditRecord] = []
    async with client_for(rec, audit) as client:
        await client.download("https://storage.test/files/a.pdf?X-Signature=s3cr3t", tmp_path)
        with pytest.raises(ApiError):
            await client.download("https://storage.test/files/gone.pdf", tmp_path / "b.pdf")
        with pytest.raises(InvalidParameterError):
            await client.download("file:///etc/passwd", tmp_path / "c.pdf")
        with pytest.raises(InvalidParameterError):
            await client.download("https://storage.test/d.pdf", tmp_path / "d.pdf", max_size=0)
    assert ["ok", "http_404", "refused", "refused"] == [r.outcome for r in audit]
    assert {"api_entreprise_proxied_files"} == {r.operation_id for r in audit}
    assert "/files/a.pdf" == audit[0].entity_id
    assert all("s3cr3t" not in repr(r) for r in audit)
    assert 2 == len(rec.requests)


async def test_a_redirect_off_the_api_origin_drops_the_token(tmp_path: Any) -> None:
    """https -> http on the same host, or -> another host: httpx strips Authorization."""
    api = "https://entreprise.api.gouv.fr"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/files/to-http.pdf":
            return httpx.Response(302, headers={"Location": "http://entreprise.api.gouv.fr/x.pdf"})
        if request.url.path == "/files/to-storage.pdf":
            return httpx.Response(302, headers={"Location": "https://storage.test/x.pdf"})
        return httpx.Response(200, content=b"%PDF", headers={"Content-Type": "application/pdf"})

    rec = Recorder(handle)
    async with client_for(rec) as client:
        await client.download(f"{api}/files/to-http.pdf", tmp_path / "a.pdf")
        await client.download(f"{api}/files/to-storage.pdf", tmp_path / "b.pdf")
    sent = [("authorization" in r.headers, str(r.url)) for r in rec.requests]
    assert [
        (True, f"{api}/files/to-http.pdf"),
        (False, "http://entreprise.api.gouv.fr/x.pdf"),
        (True, f"{api}/files/to-storage.pdf"),
        (False, "https://storage.test/x.pdf"),
    ] == sent


async def test_a_huge_retry_in_is_capped_for_retries_too() -> None:
    """meta.retry_in of 1e12 on a 502: the retry waits the cap at most, not for ever."""
    from apientreprise_async import ProviderError, RetryPolicy

    rec = Recorder(
        lambda r: httpx.Response(
            502, json={"errors": [{"code": "04999", "meta": {"retry_in": 1e12}}]}
        )
    )
    async with client_for(rec) as client:
        with pytest.raises(ProviderError) as info:
            await client.get(UL_PATH, retry=None)
    assert MAX_RETRY_AFTER == info.value.retry_in
    assert MAX_RETRY_AFTER == RetryPolicy(seed=1).delay(1, info.value)


@pytest.mark.parametrize("value", ["ßß41816609600069", "ＦＲ41816609600069", "wı51004076"])
async def test_letters_do_not_become_valid_by_case_mapping(value: str) -> None:
    """Upper-casing "ß" gives "SS", "ı" gives "I": identifiers are checked as ASCII first."""
    rec = Recorder()
    async with client_for(rec) as client:
        with pytest.raises(InvalidParameterError):
            await client.call("api_entreprise_v3_dgddi_eori", siret_or_eori=value)
    assert [] == rec.requests


def test_a_governor_finalizer_never_waits_for_the_lock() -> None:
    """A collected governor's cleanup runs wherever the GC runs: it must not block.

    A thread being started collects garbage while its starter may hold the
    governors' lock and wait for it (this hung the suite): the cleanup is left
    for later instead, and done by the next finalizer that gets the lock.
    """
    import threading

    from apientreprise_async._governor import _forget_scope, _shared_for

    backend = InMemoryBackend()
    shared = _shared_for(backend)
    shared.queues["old-1/ip"] = shared.queues["old-2/ip"] = shared.queues["live/ip"] = None  # type: ignore[assignment]
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with shared.lock:
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (_forget_scope(backend, "old-1"), done.set()))
    worker.start()
    assert done.wait(2), "the finalizer blocked on a lock held elsewhere"
    assert "old-1/ip" in shared.queues  # left for later
    release.set()
    holder.join(5)
    worker.join(5)
    _forget_scope(backend, "old-2")
    assert ["live/ip"] == list(shared.queues)

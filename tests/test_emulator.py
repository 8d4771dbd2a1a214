"""The emulator's HTTP behaviour: auth, traceability, identifiers, data, documents, faults."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
import pytest

import apientreprise_async.testing as testing
from apientreprise_async import AsyncClient, AuthenticationError, Governor, Limits, NotFoundError
from apientreprise_async._auth import fingerprint
from apientreprise_async._identifiers import is_valid_siren, is_valid_siret
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.testing import COMPANIES, Emulator, Faults

from .conftest import RECIPIENT, ROOT, TOKEN, make_jwt

pytestmark = pytest.mark.anyio

SIREN = "832147656"
SIRET = "83214765600017"
UL = f"/v4/insee/sirene/unites_legales/{SIREN}"
# 2025-01-15 12:00 Paris (11:00 UTC): outside every maintenance window.
NOON = dt.datetime(2025, 1, 15, 11, 0, tzinfo=dt.UTC).timestamp()


def trace(**extra: str) -> dict[str, str]:
    """The three traceability parameters, plus any query parameter."""
    return {"context": "tests", "recipient": RECIPIENT, "object": "emulator", **extra}


def http(emulator: Emulator, token: str | None = TOKEN, **kw: Any) -> httpx.AsyncClient:
    """A raw httpx client to the emulator, authenticated with ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=emulator.transport(**kw), base_url="https://emulator.test", headers=headers
    )


def private_governor(emulator: Emulator) -> Governor:
    """A governor of its own (no state shared with other tests) on the emulator's clocks."""
    return Governor(
        Limits(period=emulator.period), backend=InMemoryBackend(), wall_clock=emulator.epoch
    )


def first_error(response: httpx.Response) -> dict[str, Any]:
    """The first item of an error answer."""
    errors: list[dict[str, Any]] = response.json()["errors"]
    return errors[0]


@pytest.fixture
def emulator() -> Emulator:
    """An emulator at noon in Paris that knows ``TOKEN``."""
    emu = Emulator(start_epoch=NOON)
    emu.add_token(TOKEN)
    return emu


def test_exports_match_all() -> None:
    """``testing.__all__`` lists exactly the public names of the module."""
    # pytest's assertion rewriting adds "@py_*" names to modules it loads.
    public = {name for name in dir(testing) if not name.startswith(("_", "@"))}
    assert set(testing.__all__) == public - {"annotations"}


def test_builtin_identifiers_pass_luhn() -> None:
    """Every built-in SIREN and SIRET is valid, and each company has one siège."""
    for company in (*COMPANIES, *testing.PUBLIC_COMPANIES):
        assert is_valid_siren(company.siren)
        assert sum(e.siege for e in company.establishments) == 1
        for est in company.establishments:
            assert is_valid_siret(est.siret)
            assert est.siret.startswith(company.siren)


async def test_dinum_is_known_like_in_production(emulator: Emulator) -> None:
    """DINUM, a real public body, answers with its public identifiers: examples run on both."""
    async with http(emulator) as client:
        ul = await client.get("/v4/insee/sirene/unites_legales/130025265", params=trace())
        siege = await client.get("/v4/insee/sirene/etablissements/13002526500013", params=trace())
    assert (200, 200) == (ul.status_code, siege.status_code)
    data = ul.json()["data"]
    assert (
        "DIRECTION INTERMINISTERIELLE DU NUMERIQUE"
        == data["personne_morale_attributs"]["raison_sociale"]
    )
    assert "13002526500013" == data["siret_siege_social"]
    assert "130025265" == siege.json()["data"]["unite_legale"]["siren"]


async def test_builtin_unite_legale(emulator: Emulator) -> None:
    """A built-in company answers 200 with rate headers and a request id."""
    async with http(emulator) as client:
        response = await client.get(UL, params=trace())
    assert 200 == response.status_code
    body = response.json()
    assert SIREN == body["data"]["siren"]
    assert (
        "ATELIERS MECANIQUES DU VAL DE LOIRE"
        == (body["data"]["personne_morale_attributs"]["raison_sociale"])
    )
    assert body["links"]["siege_social"].startswith("https://emulator.test/v4/")
    assert "250" == response.headers["RateLimit-Limit"]
    assert "249" == response.headers["RateLimit-Remaining"]
    assert response.headers["X-Request-ID"]


async def test_builtin_establishment_and_diffusion(emulator: Emulator) -> None:
    """Établissements answer on v3 and v4; a non-diffusible person is 404 on diffusibles."""
    async with http(emulator) as client:
        v3 = await client.get(f"/v3/insee/sirene/etablissements/{SIRET}", params=trace())
        v4 = await client.get(f"/v4/insee/sirene/etablissements/{SIRET}", params=trace())
        hidden = await client.get(
            "/v4/insee/sirene/unites_legales/diffusibles/881054324", params=trace()
        )
        shown = await client.get("/v4/insee/sirene/unites_legales/881054324", params=trace())
    assert (200, 200) == (v3.status_code, v4.status_code)
    assert "activite_principale_naf_rev2" in v4.json()["data"]
    assert "activite_principale_naf_rev2" not in v3.json()["data"]
    assert 404 == hidden.status_code
    assert "01003" == first_error(hidden)["code"]
    assert "partiellement_diffusible" == shown.json()["data"]["status_diffusion"]


async def test_unknown_company_is_404_with_provider(emulator: Emulator) -> None:
    """A valid but unknown SIREN gets the provider's 404 code and name."""
    async with http(emulator) as client:
        response = await client.get(
            "/v3/infogreffe/rcs/unites_legales/418166096/extrait_kbis", params=trace()
        )
    assert 404 == response.status_code
    assert "02003" == first_error(response)["code"]
    assert {"provider": "Infogreffe"} == first_error(response)["meta"]


async def test_401_codes(emulator: Emulator) -> None:
    """Missing, unknown, expired (state or JWT exp) and blacklisted tokens get their codes."""
    old = make_jwt({"exp": int(NOON) - 60})  # expired by the emulator's clock
    emulator.add_token("expired-token", state="expired")
    emulator.add_token("leaked-token", state="blacklisted")
    emulator.add_token(old)
    codes = []
    for token in (None, "unknown-token", "expired-token", old, "leaked-token"):
        async with http(emulator, token) as client:
            response = await client.get(UL, params=trace())
        assert 401 == response.status_code
        assert "token" == first_error(response)["source"]["parameter"]
        assert response.headers["X-Request-ID"]
        codes.append(first_error(response)["code"])
    assert ["00101", "00101", "00103", "00103", "00105"] == codes


async def test_403_outside_privileges(emulator: Emulator) -> None:
    """A token limited to INSEE v4 gets 403 elsewhere, and /privileges lists its rights."""
    narrow = emulator.add_token("narrow", privileges=["api_entreprise_v4_insee_unites_legales"])
    async with http(emulator, narrow) as client:
        allowed = await client.get(UL, params=trace())
        refused = await client.get(
            f"/v4/dgfip/unites_legales/{SIREN}/attestation_fiscale", params=trace()
        )
        privileges = await client.get("/privileges")
    assert 200 == allowed.status_code
    assert 403 == refused.status_code
    assert "00100" == first_error(refused)["code"]
    assert ["api_entreprise_v4_insee_unites_legales"] == privileges.json()["data"]["privileges"]


@pytest.mark.parametrize(
    ("missing", "code"), [("context", "00201"), ("recipient", "00203"), ("object", "00202")]
)
async def test_422_missing_traceability(emulator: Emulator, missing: str, code: str) -> None:
    """Each missing traceability parameter gets its own code, naming it."""
    query = trace()
    del query[missing]
    async with http(emulator) as client:
        response = await client.get(UL, params=query)
    assert 422 == response.status_code
    assert [code] == [e["code"] for e in response.json()["errors"]]
    assert missing == first_error(response)["source"]["parameter"]


@pytest.mark.parametrize(
    ("path", "code", "parameter"),
    [
        ("/v4/insee/sirene/unites_legales/123456789", "00301", "siren"),
        ("/v4/insee/sirene/etablissements/83214765600018", "00302", "siret"),
        ("/v3/ministere_interieur/rna/associations/X123/documents", "00303", "id"),
        ("/v3/douanes/etablissements/12/immatriculations_eori", "00304", "id"),
        (f"/v3/gip_mds/etablissements/{SIRET}/effectifs_mensuels/13/annee/2024", "00305", "month"),
        (f"/v3/dgfip/unites_legales/{SIREN}/liasses_fiscales/1789", "00307", "year"),
        ("/v3/data_subvention/associations/12/subventions", "00330", "id"),
        ("/v4/djepva/api-association/associations/12", "00333", "id"),
    ],
)
async def test_422_malformed_identifiers(
    emulator: Emulator, path: str, code: str, parameter: str
) -> None:
    """Malformed identifiers get the OpenAPI's code and name the parameter."""
    async with http(emulator) as client:
        response = await client.get(path, params=trace())
    assert 422 == response.status_code
    assert code == first_error(response)["code"]
    assert parameter == first_error(response)["source"]["parameter"]


async def test_add_case_wins_over_checks(emulator: Emulator) -> None:
    """A registered case is answered verbatim, even for an identifier the API would refuse."""
    emulator.add_case(
        "api_entreprise_v4_insee_unites_legales", {"siren": "invalid"}, 418, '{"teapot": true}'
    )
    emulator.add_case("api_entreprise_v4_insee_unites_legales", {"siren": SIREN}, 404, {"x": 1})
    async with http(emulator) as client:
        odd = await client.get("/v4/insee/sirene/unites_legales/invalid", params=trace())
        replaced = await client.get(UL, params=trace())
    assert (418, {"teapot": True}) == (odd.status_code, odd.json())
    assert (404, {"x": 1}) == (replaced.status_code, replaced.json())


async def test_document_url_is_served(emulator: Emulator) -> None:
    """An attestation's ``document_url`` downloads a PDF from the emulator, in its bucket."""
    async with http(emulator) as client:
        response = await client.get(
            f"/v4/dgfip/unites_legales/{SIREN}/attestation_fiscale", params=trace()
        )
        data = response.json()["data"]
        pdf = await client.get(data["document_url"])
    assert 200 == response.status_code
    assert data["document_url"].startswith("https://emulator.test/proxy/files/")
    assert 86400 == data["document_url_expires_in"]
    assert 200 == pdf.status_code
    assert "application/pdf" == pdf.headers["content-type"]
    assert pdf.content.startswith(b"%PDF-1.4")
    assert pdf.content.rstrip().endswith(b"%%EOF")
    assert "50" == pdf.headers["RateLimit-Limit"]
    assert "api_entreprise_proxied_files" == emulator.requests[-1].bucket


async def test_maintenance_window(emulator: Emulator) -> None:
    """At 01:30 Paris DGFIP answers 504 'Service non disponible' until 02:00."""
    emulator.shift_wall_clock(-10.5 * 3600)  # 12:00 -> 01:30
    async with http(emulator) as client:
        during = await client.get(
            f"/v3/dgfip/etablissements/{SIRET}/chiffres_affaires", params=trace()
        )
        insee = await client.get(UL, params=trace())
    assert 504 == during.status_code
    item = first_error(during)
    assert "03001" == item["code"]
    assert "DGFIP - Adélie" == item["meta"]["provider"]
    assert 1800 == pytest.approx(item["meta"]["retry_in"], abs=2)
    assert 200 == insee.status_code


async def test_faults_502_504_and_drops() -> None:
    """Provider errors carry ``meta.retry_in``; a dropped connection is an httpx error."""
    bad = Emulator(start_epoch=NOON, faults=Faults(share_502=1.0, retry_in=3))
    slow = Emulator(start_epoch=NOON, faults=Faults(share_504=1.0))
    cut = Emulator(start_epoch=NOON, faults=Faults(share_dropped=1.0))
    for emu in (bad, slow, cut):
        emu.add_token(TOKEN)
    async with http(bad) as client:
        r502 = await client.get(UL, params=trace())
    async with http(slow) as client:
        r504 = await client.get(UL, params=trace())
    async with http(cut) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(UL, params=trace())
    assert (502, "01999", 3) == (
        r502.status_code,
        first_error(r502)["code"],
        first_error(r502)["meta"]["retry_in"],
    )
    assert (504, "00501", 10) == (
        r504.status_code,
        first_error(r504)["code"],
        first_error(r504)["meta"]["retry_in"],
    )
    assert [None] == [r.status for r in cut.requests]
    assert ["dropped"] == [r.outcome for r in cut.requests]


async def test_faults_are_seeded() -> None:
    """Two emulators with the same seed fail the same calls."""
    outcomes = []
    for _ in range(2):
        emu = Emulator(start_epoch=NOON, seed=7, faults=Faults(share_502=0.3, share_504=0.2))
        emu.add_token(TOKEN)
        async with http(emulator=emu) as client:
            for _ in range(20):
                await client.get(UL, params=trace())
        outcomes.append([r.status for r in emu.requests])
    assert outcomes[0] == outcomes[1]
    assert {200, 502, 504} == set(outcomes[0])


async def test_recording_hides_the_token(emulator: Emulator) -> None:
    """Records keep the token's fingerprint, the endpoint, the status and the client IP."""
    async with http(emulator, client_ip="10.1.2.3") as client:
        await client.get(UL, params=trace())
    (record,) = emulator.requests
    assert fingerprint(TOKEN) == record.token
    assert TOKEN not in repr(record)
    assert ("api_entreprise_v4_insee_unites_legales", 200, "10.1.2.3") == (
        record.operation_id,
        record.status,
        record.client_ip,
    )
    assert 1 == len(emulator.calls(token=TOKEN, bucket="json_resources_entreprise"))


async def test_async_client_through_emulator(emulator: Emulator) -> None:
    """The package's client parses the emulator's answers, errors and headers."""
    async with AsyncClient(
        TOKEN,
        transport=emulator.transport(),
        governor=private_governor(emulator),
        recipient=RECIPIENT,
        context="tests",
        object="emulator",
        check_maintenance=False,
    ) as client:
        response = await client.call("api_entreprise_v4_insee_unites_legales", siren=SIREN)
        with pytest.raises(NotFoundError):
            await client.call("api_entreprise_v4_insee_unites_legales", siren="418166096")
    assert response.rate_limit is not None
    assert 250 == response.rate_limit.limit
    assert response.request_id == emulator.requests[0].request_id
    async with AsyncClient(
        "not-registered", transport=emulator.transport(), governor=private_governor(emulator)
    ) as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.get("/privileges")


async def test_pytest_plugin_fixtures(
    api_entreprise_client: AsyncClient, api_entreprise_emulator: Emulator
) -> None:
    """The plugin's client fixture talks to the plugin's emulator."""
    response = await api_entreprise_client.call(
        "api_entreprise_v3_european_commission_vies", siren=SIREN
    )
    assert {"tva_number": "FR55832147656"} == response.raw["data"]
    assert 1 == len(api_entreprise_emulator.requests)


BUILTIN_OPERATIONS = [
    ("api_entreprise_v3_insee_unites_legales", "siren"),
    ("api_entreprise_v4_insee_unites_legales", "siren"),
    ("api_entreprise_v4_insee_unites_legales_diffusables", "siren"),
    ("api_entreprise_v3_insee_sieges_unites_legales", "siren"),
    ("api_entreprise_v4_insee_sieges_unites_legales", "siren"),
    ("api_entreprise_v3_insee_etablissements", "siret"),
    ("api_entreprise_v4_insee_etablissements", "siret"),
    ("api_entreprise_v4_insee_etablissements_diffusables", "siret"),
    ("api_entreprise_v3_insee_adresses_etablissements", "siret"),
    ("api_entreprise_v3_european_commission_vies", "siren"),
    ("api_entreprise_v3_dgfip_attestations_fiscales", "siren"),
    ("api_entreprise_v4_dgfip_attestations_fiscales", "siren"),
    ("api_entreprise_v3_acoss_attestations_sociales", "siren"),
    ("api_entreprise_v4_acoss_attestations_sociales", "siren"),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_builtin_data_fits_the_records() -> None:
    """Every built-in answer converts into the client's typed records."""
    # A scaled minute: five companies make ten calls of the 5-per-minute attestation
    # fiscale (v3 and v4 share its bucket until an answer splits them), so the
    # governor rightly waits for a window; at 60 s that wait was a whole minute.
    emulator = Emulator(start_epoch=NOON, period=0.2)
    emulator.add_token(TOKEN)
    async with AsyncClient(
        TOKEN,
        transport=emulator.transport(),
        governor=private_governor(emulator),
        recipient=RECIPIENT,
        context="tests",
        object="records",
        check_maintenance=False,
    ) as client:
        for company in COMPANIES:
            for operation_id, kind in BUILTIN_OPERATIONS:
                if "diffusables" in operation_id and not company.diffusible:
                    continue
                ids = (
                    [company.siren]
                    if kind == "siren"
                    else [e.siret for e in company.establishments]
                )
                for value in ids:
                    response = await client.call(operation_id, **{kind: value})
                    assert 200 == response.http_status, (operation_id, value)


async def test_readme_emulator_example_runs() -> None:
    """The README's emulator example passes as written."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("## Testing with the emulator\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    await namespace["test_with_the_emulator"]()
